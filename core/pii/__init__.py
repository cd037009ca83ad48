"""PII vault: envelope encryption (AES-256-GCM, or SM4-GCM for GB/T 39786), blind indexes (HMAC-SHA256 or
HMAC-SM3), masked display forms, and a log of every decrypt.

    vault = await open_vault(stores)                      # once per process, at start-up
    blob = await vault.encrypt(conn, id_number, table="accounts", column="id_number_enc", row_id=account_id)
    lookup = vault.blind_index(id_number, purpose="accounts.id_number", normalize=normalize_id_number)
    value = await vault.decrypt(conn, blob, table="accounts", column="id_number_enc", row_id=account_id,
                                actor=f"staff:{staff_id}", reason="appeal 1234")
"""

from core.pii.masking import (
    mask_id_number,
    mask_name,
    mask_phone,
    normalize_id_number,
    normalize_name,
    normalize_phone,
    normalize_text,
)
from core.pii.vault import (
    AccessLogEntry,
    EnvelopeInfo,
    PiiDecryptError,
    PiiError,
    PiiKeyInfo,
    ReencryptBatch,
    RewrapResult,
    RowId,
    Vault,
    access_log,
    describe,
    index_hash_for,
    list_keys,
    open_vault,
    reencrypt_batch,
    rewrap,
    rotate_data_key,
)

__all__ = [
    "AccessLogEntry",
    "EnvelopeInfo",
    "PiiDecryptError",
    "PiiError",
    "PiiKeyInfo",
    "ReencryptBatch",
    "RewrapResult",
    "RowId",
    "Vault",
    "access_log",
    "describe",
    "index_hash_for",
    "list_keys",
    "mask_id_number",
    "mask_name",
    "mask_phone",
    "normalize_id_number",
    "normalize_name",
    "normalize_phone",
    "normalize_text",
    "open_vault",
    "reencrypt_batch",
    "rewrap",
    "rotate_data_key",
]
