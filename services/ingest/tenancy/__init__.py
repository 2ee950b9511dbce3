"""Tenants: who a caller is, what it may do to whose objects, and what it may hold."""
