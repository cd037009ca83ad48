"""Health pass: status rules, issuance, verification, trust lists, venue codes, appeals.

The offline part needs no database and may be shipped to checkpoints on its own:
codec (the wire format: Base45, zlib, CBOR, COSE_Sign1, CWT claim keys), certs (root and signer
certificates, pass-type OIDs, kids), trust (TrustStore, trust-list formats, revocation ids) and verify
(`verify`, which never raises, and `sign_pass`). docs/pass-format.md describes the format for vendors.
"""
