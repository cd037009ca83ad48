"""Accounts, SMS login, real-name identity and levels, sessions and tokens, legal persons, consent."""
