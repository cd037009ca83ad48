import pytest

from core.settings import SettingsError, load_settings


def test_defaults_need_no_configuration() -> None:
    settings = load_settings({})
    assert settings.database_url is None and settings.port == 8000 and settings.env == "development"


def test_values_are_parsed_from_the_environment() -> None:
    settings = load_settings(
        {
            "TONGBAN_PORT": "9000",
            "TONGBAN_CORS_ORIGINS": "https://a.example, https://b.example",
            "TONGBAN_LOG_JSON": "no",
        }
    )
    assert settings.port == 9000
    assert settings.cors_origins == ("https://a.example", "https://b.example")
    assert settings.log_json is False


@pytest.mark.parametrize(
    ("environ", "variable"),
    [
        ({"TONGBAN_PORT": "eighty"}, "TONGBAN_PORT"),
        ({"TONGBAN_DB_ACQUIRE_TIMEOUT": "soon"}, "TONGBAN_DB_ACQUIRE_TIMEOUT"),
        ({"TONGBAN_ENV": "staging"}, "TONGBAN_ENV"),
        ({"TONGBAN_SERVER": "gunicorn"}, "TONGBAN_SERVER"),
        ({"TONGBAN_BENCH_ROUTES": "maybe"}, "TONGBAN_BENCH_ROUTES"),
        ({"TONGBAN_ENV": "production"}, "TONGBAN_DATABASE_URL"),
        ({"TONGBAN_ENV": "production", "TONGBAN_DATABASE_URL": "postgresql://x/y"}, "TONGBAN_REDIS_URL"),
        (
            {
                "TONGBAN_ENV": "production",
                "TONGBAN_DATABASE_URL": "postgresql://x/y",
                "TONGBAN_REDIS_URL": "redis://x",
            },
            "TONGBAN_MASTER_KEY",
        ),
        ({"TONGBAN_DB_POOL_MIN": "20", "TONGBAN_DB_POOL_MAX": "5"}, "TONGBAN_DB_POOL_MIN"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_variable(environ: dict[str, str], variable: str) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(environ)
    message = str(info.value)
    assert message.startswith(variable + ":")
    assert "\n" not in message
