from pathlib import Path

import pytest

from core.masterkey import key_id, master_keyring, new_key_text
from core.settings import SettingsError, load_settings


def test_development_makes_one_key_file_and_reuses_it(tmp_path: Path) -> None:
    settings = load_settings({"TONGBAN_DATA_DIR": str(tmp_path)})
    first = master_keyring(settings)
    assert (tmp_path / "master.key").stat().st_mode & 0o777 == 0o600
    assert len(first.current) == 32
    assert master_keyring(load_settings({"TONGBAN_DATA_DIR": str(tmp_path)})).current == first.current


def test_keyring_from_variable_keeps_old_keys_for_unwrapping() -> None:
    new, old = new_key_text(), new_key_text()
    ring = master_keyring(load_settings({"TONGBAN_MASTER_KEY": f"{new},{old}"}))
    assert len(ring.keys) == 2
    assert ring.current_id == key_id(ring.current)
    assert ring.get(next(k for k in ring.keys if k != ring.current_id)) != ring.current


@pytest.mark.parametrize("value", ["not base64!!", "c2hvcnQ"])
def test_bad_master_key_names_the_variable(value: str) -> None:
    with pytest.raises(SettingsError, match=r"^TONGBAN_MASTER_KEY:"):
        master_keyring(load_settings({"TONGBAN_MASTER_KEY": value}))
