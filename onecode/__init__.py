"""One-code aggregator: transit, medical insurance, payment; terminals; settlement ledger."""
