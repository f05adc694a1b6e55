"""services/accounting"""
