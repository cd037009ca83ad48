"""Health pass: status rules, issuance, verification, trust lists, venue codes, appeals."""
