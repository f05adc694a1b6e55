"""services/statistics"""
