"""services/transaction"""
