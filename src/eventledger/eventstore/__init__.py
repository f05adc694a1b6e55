"""eventstore"""
