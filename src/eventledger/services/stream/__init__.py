"""services/stream"""
