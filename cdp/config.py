"""Settings, read once from environment variables and an optional ``cdp.yaml``, then passed in.

Precedence: explicit arguments > ``CDP_*`` environment variables > ``cdp.yaml`` in the working directory
(or the file named by ``CDP_CONFIG``) > defaults below.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

PURPOSES = (
    "email_marketing",
    "sms_marketing",
    "push_marketing",
    "personalised_ads",
    "analytics",
    "profiling",
)

#: Which contact point a purpose needs in an export.
PURPOSE_CHANNEL = {
    "email_marketing": "email",
    "sms_marketing": "phone",
    "push_marketing": "device_id",
    "personalised_ads": "customer_id",
    "analytics": "customer_id",
    "profiling": "customer_id",
}


@dataclass(frozen=True)
class Settings:
    """Everything configurable about one installation."""

    db_path: Path = Path("data/cdp.duckdb")
    inbox: Path = Path("data/inbox")
    home: Path = Path(".cdp")  # secrets, Dagster home, export files, backups
    default_region: str = "GB"
    segments_dir: Path = Path("data/segments")
    #: Source trust order for golden-record survivorship, most trusted first.
    survivorship: tuple[str, ...] = ("crm", "store", "app", "web")
    #: The currency of profiles' spend (ISO 4217); an amount without a currency is in it.
    currency: str = "GBP"
    #: Units of ``currency`` per unit of another currency (``EUR: 0.86``): amounts in a currency without a
    #: rate count as orders, not as spend.
    exchange_rates: dict[str, float] = field(default_factory=dict)
    #: Splink match probability above which two records are one customer.
    match_threshold: float = 0.9
    #: An identifier seen on more distinct people-like records than this is not a hard link.
    max_records_per_identifier: dict[str, int] = field(
        default_factory=lambda: {
            "user_id": 50_000,
            "loyalty_id": 50_000,
            "email_key": 50_000,
            "phone_e164": 50_000,
            "crm_id": 50_000,
            "device_id": 50_000,
            "anonymous_id": 50_000,
        }
    )
    #: A blocking rule's block (units sharing its key: a name, a date of birth and initial...) holding more
    #: than this many units pairs none of them: one shopper's thousands of receipts under one name, or a
    #: till's default customer, would be scored pair by pair. At 1M records the largest block holds 883.
    max_units_per_block: int = 2000
    engine: str = "duckdb"
    spark_master: str = "local[2]"
    #: Folder every Spark executor can read (a shared mount) where the Spark engine writes the person units
    #: as Parquet for Spark to read; empty: they go to Spark from the driver's memory.
    spark_staging: str = ""
    threads: int = 2
    memory_limit: str = "8GB"

    @property
    def dagster_home(self) -> Path:
        return self.home / "dagster"

    @property
    def exports_dir(self) -> Path:
        return self.home / "exports"

    @property
    def secret_path(self) -> Path:
        return self.home / "secret.key"

    def with_overrides(self, **kwargs: Any) -> Settings:
        return replace(self, **{k: v for k, v in kwargs.items() if v is not None})


#: Engines that can run the Splink model (see identity/spark.py for the Spark one).
ENGINES = ("duckdb", "spark")

_ENV = {
    "db_path": "CDP_DB",
    "inbox": "CDP_INBOX",
    "home": "CDP_HOME",
    "default_region": "CDP_DEFAULT_REGION",
    "currency": "CDP_CURRENCY",
    "segments_dir": "CDP_SEGMENTS_DIR",
    "match_threshold": "CDP_MATCH_THRESHOLD",
    "engine": "CDP_ENGINE",
    "spark_master": "CDP_SPARK_MASTER",
    "spark_staging": "CDP_SPARK_STAGING",
    "threads": "CDP_THREADS",
    "memory_limit": "CDP_MEMORY_LIMIT",
}


_PATHS = {"db_path", "inbox", "home", "segments_dir"}
_NUMBERS: dict[str, type] = {"match_threshold": float, "threads": int, "max_units_per_block": int}


def _coerce(name: str, value: Any) -> Any:
    """The setting's value in its type; a value that does not fit is one line naming the setting."""
    from cdp.errors import CdpError

    if name in _PATHS:
        if value is None or str(value).strip() == "":
            raise CdpError(f"{name}: a path is needed")
        if name == "db_path" and not Path(value).name:  # "--db ''" reaches here as Path("."), that is "."
            raise CdpError(f"{name}: {str(value)!r} names a folder; name the DuckDB file (e.g. data/cdp.duckdb)")
        return Path(value)
    if name == "survivorship":
        if isinstance(value, str) or not isinstance(value, list | tuple):
            raise CdpError(f"survivorship: {value!r} is not a list of sources (e.g. [crm, store, app, web])")
        return tuple(value)
    if name == "default_region":
        import phonenumbers

        value = str(value).strip().upper()
        if value not in phonenumbers.SUPPORTED_REGIONS:
            raise CdpError(f"default_region: {value!r} is not a region phone numbers know (ISO 3166 alpha-2, e.g. GB)")
    if name == "currency":
        value = _currency_code(name, value)
    if name == "exchange_rates":
        if not isinstance(value, dict):
            raise CdpError(f"exchange_rates: {value!r} is not a map of currency codes to rates (e.g. EUR: 0.86)")
        rates = {}
        for code, rate in value.items():
            if isinstance(rate, bool) or not isinstance(rate, int | float) or rate <= 0:
                raise CdpError(f"exchange_rates: {code}: {rate!r} is not a positive number")
            rates[_currency_code(f"exchange_rates: {code}", code)] = float(rate)
        return rates
    if name in _NUMBERS:
        try:
            number = _NUMBERS[name](value)
        except (TypeError, ValueError):
            raise CdpError(f"{name}: {value!r} is not a {_NUMBERS[name].__name__}") from None
        if name == "max_units_per_block" and number < 2:
            raise CdpError(f"max_units_per_block: {value!r} would pair no units at all (at least 2)")
        if name == "match_threshold" and not 0 < number < 1:
            raise CdpError(f"match_threshold: {value!r} is not a probability between 0 and 1 (e.g. 0.9)")
        if name == "threads" and number < 1:
            raise CdpError(f"threads: {value!r} is not a number of threads (at least 1)")
        return number
    if name == "memory_limit":
        return _memory_limit(value)
    if name == "engine" and value not in ENGINES:
        raise CdpError(f"engine: {value!r} is not one of {', '.join(ENGINES)}")
    return value


#: Units DuckDB's memory_limit takes, in bytes (1000^i and 1024^i; a bare K, M, G or T is 1000^i to it too).
_MEMORY_UNITS = {
    "B": 1, "BYTES": 1, "K": 10**3, "KB": 10**3, "KIB": 2**10, "M": 10**6, "MB": 10**6, "MIB": 2**20,
    "G": 10**9, "GB": 10**9, "GIB": 2**30, "T": 10**12, "TB": 10**12, "TIB": 2**40,
}  # fmt: skip
_LEAST_MEMORY = 128 * 2**20


def _machine_memory() -> float:
    """The machine's memory in bytes, as DuckDB takes a share of it (infinite where the system does not say)."""
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return float("inf")


def _memory_limit(value: Any) -> str:
    """``value`` as DuckDB's ``memory_limit`` reads it (``8GB``, ``500 MiB``, ``75%`` of the machine's), checked
    here, so that a setting that does not fit stops the command before a run starts, not in its first step."""
    from cdp.errors import CdpError

    text = str(value).strip()
    amount = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([A-Za-z]+|%)", text)
    unit = amount.group(2).upper() if amount else ""
    if not amount or (unit != "%" and unit not in _MEMORY_UNITS):
        raise CdpError(f"memory_limit: {value!r} is not an amount of memory (e.g. 8GB, 500MB or 75%)")
    number = float(amount.group(1))
    if unit == "%" and not 0 < number <= 100:
        raise CdpError(f"memory_limit: {value!r} is not a share of the machine's memory (more than 0%, at most 100%)")
    if (number / 100 * _machine_memory() if unit == "%" else number * _MEMORY_UNITS[unit]) < _LEAST_MEMORY:
        raise CdpError(f"memory_limit: {value!r} is too little for the store to work in (at least 128MiB)")
    return text


def _currency_code(setting: str, value: Any) -> str:
    from cdp.errors import CdpError

    code = str(value).strip().upper()
    if not re.fullmatch(r"[A-Z]{3}", code):
        raise CdpError(f"{setting}: {value!r} is not a currency code (ISO 4217, e.g. GBP)")
    return code


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Read settings once: defaults, then ``cdp.yaml``, then ``CDP_*`` variables, then ``overrides``."""
    values: dict[str, Any] = {}
    named = config_file or os.environ.get("CDP_CONFIG")
    path = Path(named) if named else Path("cdp.yaml")
    if named or path.exists():
        from cdp.errors import CdpError

        if not path.is_file():  # a settings file named on purpose and missing is a mistake, not defaults
            raise CdpError(f"{path}: no such settings file" + ("" if config_file else " (named by CDP_CONFIG)"))
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise CdpError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
        if not isinstance(loaded, dict):
            raise CdpError(f"{path}: expected settings as 'name: value' lines")
        known = {f.name for f in fields(Settings)}
        unknown = sorted(set(loaded) - known)
        if unknown:
            raise CdpError(f"{path}: unknown setting(s) {', '.join(unknown)}")
        values.update({k: _coerce(k, v) for k, v in loaded.items()})
    for name, var in _ENV.items():
        if var in os.environ:
            values[name] = _coerce(name, os.environ[var])
    values.update({k: _coerce(k, v) for k, v in overrides.items() if v is not None})
    return Settings(**values)
