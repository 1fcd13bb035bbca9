"""Django settings for Keypool, read from the environment.

Every value comes from an environment variable, so one build serves
development, tests and production. With ``DEBUG`` on (the default) missing
secrets are generated once and kept in ``.dev-secrets.json`` next to
``manage.py``; that file is ignored by git. With ``DEBUG`` off a missing
secret stops start-up with an error that names the variable.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import dj_database_url
from cryptography.fernet import Fernet
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
DEV_SECRETS_FILE = BASE_DIR / ".dev-secrets.json"

TRUE_WORDS = {"1", "true", "yes", "on"}
FALSE_WORDS = {"0", "false", "no", "off", ""}


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in TRUE_WORDS:
        return True
    if value in FALSE_WORDS:
        return False
    raise ImproperlyConfigured(
        f"{name}={raw!r} is not a boolean: use 1/true/yes/on or 0/false/no/off."
    )


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise ImproperlyConfigured(
            f"{name}={raw!r} is invalid: use a whole number of seconds, 0 or more."
        )
    return value


def env_list(name: str, default: str = "") -> list[str]:
    return [
        item.strip()
        for item in os.environ.get(name, default).split(",")
        if item.strip()
    ]


def load_dev_secrets() -> dict[str, str]:
    """Return the development secrets, generating the file on first use."""
    if DEV_SECRETS_FILE.exists():
        return json.loads(DEV_SECRETS_FILE.read_text())
    secrets = {
        "SECRET_KEY": "django-insecure-dev-" + Fernet.generate_key().decode(),
        "KEYPOOL_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
    }
    # Write a private temporary file, then link it into place: the link fails
    # if another process got there first, and then both use that one's keys.
    fd, temporary = tempfile.mkstemp(dir=BASE_DIR, prefix=".dev-secrets.")
    try:
        with os.fdopen(fd, "w") as file:
            json.dump(secrets, file, indent=2)
        os.link(temporary, DEV_SECRETS_FILE)
    except FileExistsError:
        return json.loads(DEV_SECRETS_FILE.read_text())
    finally:
        os.unlink(temporary)
    return secrets


def required_secret(name: str) -> str:
    value = os.environ.get(name, "").strip()
    if value:
        return value
    if DEBUG:
        return load_dev_secrets()[name]
    raise ImproperlyConfigured(
        f"The {name} environment variable is missing. It is required when "
        "DEBUG is off; see docs/settings.md for how to generate it."
    )


DEBUG = env_bool("DEBUG", True)
SECRET_KEY = required_secret("SECRET_KEY")

# Fernet keys, comma-separated. The first one encrypts and all of them
# decrypt, so a new key can be put in front while old rows are rotated.
KEYPOOL_ENCRYPTION_KEYS = env_list(
    "KEYPOOL_ENCRYPTION_KEYS", required_secret("KEYPOOL_ENCRYPTION_KEYS")
)
if not KEYPOOL_ENCRYPTION_KEYS:
    raise ImproperlyConfigured(
        "The KEYPOOL_ENCRYPTION_KEYS environment variable lists no key. Set it "
        "to one or more comma-separated Fernet keys; see docs/settings.md."
    )

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "127.0.0.1,localhost" if DEBUG else "")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_htmx",
    "pool",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
]

ROOT_URLCONF = "keypool.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

WSGI_APPLICATION = "keypool.wsgi.application"

DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL") or f"sqlite:///{BASE_DIR / 'db.sqlite3'}",
        conn_max_age=env_int("CONN_MAX_AGE", 0),
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"]["OPTIONS"] = {
        # IMMEDIATE takes the write lock when a transaction starts, and the
        # timeout (seconds) makes a second writer wait for it instead of
        # failing with "database is locked" halfway through.
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }

PASSWORD_VALIDATION = "django.contrib.auth.password_validation"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": f"{PASSWORD_VALIDATION}.UserAttributeSimilarityValidator"},
    {"NAME": f"{PASSWORD_VALIDATION}.MinimumLengthValidator"},
    {"NAME": f"{PASSWORD_VALIDATION}.CommonPasswordValidator"},
    {"NAME": f"{PASSWORD_VALIDATION}.NumericPasswordValidator"},
]

# A stale CSRF token gets a 403 with a message to reload the page and a
# header that pool.js recognises.
CSRF_FAILURE_VIEW = "pool.views.csrf_failure"
# Error reports hide sensitive POST fields (the API key) even with DEBUG on.
DEFAULT_EXCEPTION_REPORTER_FILTER = "pool.views.SecretSafeExceptionReporterFilter"
# A reorder posts one ``order`` field per key of the vendor; Django's default
# of 1000 fields would reject the reorder of a vendor with 1000 keys.
DATA_UPLOAD_MAX_NUMBER_FIELDS = 10000

LOGIN_URL = "admin:login"
LOGIN_REDIRECT_URL = "pool:index"

LANGUAGE_CODE = "en-us"
TIME_ZONE = os.environ.get("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = Path(os.environ.get("STATIC_ROOT", BASE_DIR / "staticfiles"))

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

if not DEBUG:
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
    SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", True)
    SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", True)
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    if env_bool("TRUST_X_FORWARDED_PROTO", False):
        SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "plain"},
    },
    "loggers": {
        "pool": {
            "handlers": ["console"],
            "level": os.environ.get("POOL_LOG_LEVEL", "INFO"),
        },
    },
}
