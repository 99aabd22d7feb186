"""Simulator configuration: frozen dataclasses read from SCALE-Sim-shaped INI files.

Sections and keys (SCALE-Sim's own names are accepted as aliases, see `ALIASES`):

    [general]               run_name
    [architecture_presets]  array_height, array_width, dataflow (os|ws|is), precision (int8|fp16|fp32),
                            clock_ghz, input_buffer_kb, weight_buffer_kb, output_buffer_kb
    [mapping_unit]          sorter_width, merger_width, distance_units, symmetric
    [memory]                cache_kb, line_points, ways, policy (lru|fifo|direct), gather_order
                            (output|offset), caching, reconfigure, fusion, map_buffer_kb, coord_buffer_kb
    [dram]                  type (HBM2|LPDDR4|DDR4|GDDR6), bandwidth_gbps, latency_cycles, burst_bytes,
                            pj_per_bit (default: the type's)
    [energy]                table (horowitz45|accelergy45), node_nm
    [run_presets]           overlap, fidelity (analytic|trace), grouped, interface_bandwidth (user|calc)

Every value is checked when a config is loaded or replaced: integers must be integers (``4.0`` is accepted in an
INI file, ``4.5`` is not), floats finite, and each number within its range in `RANGES`, generous for real
designs: array sides, sorter / merger widths, distance units and ways 1 to 65536; buffers and the cache 0.001 KB
(a byte) to 1 GiB (1048576 KB); line_points 1 to 4096; clock 1 MHz to 100 GHz; DRAM bandwidth 0.001 to 10^6
GB/s, latency 0 to 10^9 cycles, bursts 1 B to 1 MiB, access energy 10^-6 to 10^4 pJ/bit; node 1 to 1000 nm.
Config files larger than `pointacc.limits.MAX_FILE_BYTES` are refused.

``interface_bandwidth`` (SCALE-Sim's ``InterfaceBandwidth``, USER or CALC, any case): ``user`` makes the DRAM
bandwidth a limit (a layer takes as long as its slower side, MACs or transfers); ``calc`` is SCALE-Sim's
bandwidth-estimation mode: DRAM never stalls the array and the reports give the bandwidth each layer needs. With
CALC, SCALE-Sim ignores ``Bandwidth``, and so does this simulator's timing (the value, when given, is still read
and checked). SCALE-Sim's ``Bandwidth`` may list one value per operand (``10,10,10``); like SCALE-Sim, the first
one is used.
"""

from __future__ import annotations

import configparser
import dataclasses
import pathlib
from dataclasses import dataclass, field

from pointacc.limits import MAX_FILE_BYTES, integer, number

PRESETS = pathlib.Path(__file__).resolve().parent / "presets"


@dataclass(frozen=True)
class ArrayConfig:
    """Systolic Matrix Unit and its on-chip buffers."""

    array_height: int = 64
    array_width: int = 64
    dataflow: str = "os"
    precision: str = "fp16"
    clock_ghz: float = 1.0
    input_buffer_kb: float = 256.0
    weight_buffer_kb: float = 256.0
    output_buffer_kb: float = 256.0

    @property
    def element_bytes(self) -> int:
        return {"int8": 1, "fp16": 2, "fp32": 4}[self.precision]


@dataclass(frozen=True)
class MappingConfig:
    """Ranking-based Mapping Unit: a bitonic sorter, a merger and distance units."""

    sorter_width: int = 16
    merger_width: int = 16
    distance_units: int = 16
    symmetric: bool = True


@dataclass(frozen=True)
class MemoryConfig:
    """Memory Management Unit: the gathered-input-feature cache, map and coordinate buffers, fusion."""

    cache_kb: float = 256.0
    line_points: int = 4
    ways: int = 8
    policy: str = "lru"
    gather_order: str = "output"
    caching: bool = True
    reconfigure: bool = True
    fusion: bool = True
    map_buffer_kb: float = 64.0
    coord_buffer_kb: float = 64.0


@dataclass(frozen=True)
class DramConfig:
    type: str = "HBM2"
    bandwidth_gbps: float = 256.0
    latency_cycles: int = 100
    burst_bytes: int = 64
    pj_per_bit: float | None = None


@dataclass(frozen=True)
class EnergyConfig:
    table: str = "horowitz45"
    node_nm: float = 45.0


@dataclass(frozen=True)
class RunConfig:
    overlap: bool = True
    fidelity: str = "trace"
    grouped: bool = False
    interface_bandwidth: str = "user"


@dataclass(frozen=True)
class Config:
    run_name: str = "pointacc"
    array: ArrayConfig = field(default_factory=ArrayConfig)
    mapping: MappingConfig = field(default_factory=MappingConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    dram: DramConfig = field(default_factory=DramConfig)
    energy: EnergyConfig = field(default_factory=EnergyConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def replace(self, **changes) -> Config:
        """A copy with "section.key" (or "key" when unambiguous) values changed, e.g. memory.cache_kb=128."""
        updates: dict[str, dict] = {}
        for name, value in changes.items():
            section, key = _locate(name.replace("__", "."))
            updates.setdefault(section, {})[key] = _coerce(section, key, value)
        top = {k: v for k, v in updates.pop("general", {}).items()}
        parts = {s: dataclasses.replace(getattr(self, s), **kv) for s, kv in updates.items()}
        out = dataclasses.replace(self, **top, **parts)
        validate(out)
        return out

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


# INI section -> Config attribute
SECTIONS = {
    "general": "general",
    "architecture_presets": "array",
    "mapping_unit": "mapping",
    "memory": "memory",
    "dram": "dram",
    "energy": "energy",
    "run_presets": "run",
}

INI_SECTION = {attribute: section for section, attribute in SECTIONS.items()}

# SCALE-Sim key (lower case, as configparser reads it) -> our key, per section.
ALIASES = {
    "architecture_presets": {
        "arrayheight": "array_height",
        "arraywidth": "array_width",
        "ifmapsramszkb": "input_buffer_kb",
        "filtersramszkb": "weight_buffer_kb",
        "ofmapsramszkb": "output_buffer_kb",
        "bandwidth": "dram.bandwidth_words",
        "memorybanks": None,
        "ifmapoffset": None,
        "filteroffset": None,
        "ofmapoffset": None,
    },
    "run_presets": {
        "interfacebandwidth": "interface_bandwidth",
        "usesparsity": None,
        "sparsitysupport": None,
    },
    "general": {"run_name": "run_name"},
}

_CHOICES = {
    ("array", "dataflow"): ("os", "ws", "is"),
    ("array", "precision"): ("int8", "fp16", "fp32"),
    ("memory", "policy"): ("lru", "fifo", "direct"),
    ("memory", "gather_order"): ("output", "offset"),
    ("dram", "type"): ("HBM2", "LPDDR4", "DDR4", "GDDR6"),
    ("energy", "table"): ("horowitz45", "accelergy45"),
    ("run", "fidelity"): ("analytic", "trace"),
    ("run", "interface_bandwidth"): ("user", "calc"),
}


_KB = (0.001, 2.0**20)  # a buffer holds at least a byte and at most 1 GiB
RANGES: dict[tuple[str, str], tuple[float, float]] = {
    ("array", "array_height"): (1, 65536),
    ("array", "array_width"): (1, 65536),
    ("array", "clock_ghz"): (0.001, 100),
    ("array", "input_buffer_kb"): _KB,
    ("array", "weight_buffer_kb"): _KB,
    ("array", "output_buffer_kb"): _KB,
    ("mapping", "sorter_width"): (1, 65536),
    ("mapping", "merger_width"): (1, 65536),
    ("mapping", "distance_units"): (1, 65536),
    ("memory", "cache_kb"): _KB,
    ("memory", "line_points"): (1, 4096),
    ("memory", "ways"): (1, 65536),
    ("memory", "map_buffer_kb"): _KB,
    ("memory", "coord_buffer_kb"): _KB,
    ("dram", "bandwidth_gbps"): (0.001, 1e6),
    ("dram", "latency_cycles"): (0, 10**9),
    ("dram", "burst_bytes"): (1, 2**20),
    ("dram", "pj_per_bit"): (1e-6, 1e4),
    ("energy", "node_nm"): (1, 1000),
}
"""(section, key) -> the closed range [low, high] of every number."""


class ConfigError(ValueError):
    """A configuration value or file that cannot be used; the message names the section and key."""


def _fields(section: str) -> dict[str, dataclasses.Field]:
    if section == "general":
        return {"run_name": next(f for f in dataclasses.fields(Config) if f.name == "run_name")}
    cls = {f.name: f.type for f in dataclasses.fields(Config)}[section]
    cls = {
        "ArrayConfig": ArrayConfig,
        "MappingConfig": MappingConfig,
        "MemoryConfig": MemoryConfig,
        "DramConfig": DramConfig,
        "EnergyConfig": EnergyConfig,
        "RunConfig": RunConfig,
    }[cls]
    return {f.name: f for f in dataclasses.fields(cls)}


def _locate(name: str) -> tuple[str, str]:
    if "." in name:
        section, key = name.split(".", 1)
        section = SECTIONS.get(section, section)
        if section not in SECTIONS.values() or key not in _fields(section):
            raise ConfigError(f"unknown config key {name!r}")
        return section, key
    hits = [s for s in SECTIONS.values() if name in _fields(s)]
    if len(hits) != 1:
        raise ConfigError(f"config key {name!r} is {'ambiguous' if hits else 'unknown'}; use section.key")
    return hits[0], name


def _coerce(section: str, key: str, value):
    """A value (INI text, or a Python value given to `Config.replace`) as the field's type; ranges are checked
    later by `validate`."""
    kind = str(_fields(section)[key].type)
    if kind in ("int", "float") and isinstance(value, (int, float)) and not isinstance(value, bool):
        return value  # validate() checks the type and the range
    text = value if isinstance(value, str) else repr(value)
    text = text.strip()
    try:
        if "bool" in kind:
            if isinstance(value, bool):
                return value
            lowered = text.lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if kind == "int":
            try:
                return int(text)
            except ValueError:
                number = float(text)  # "1e3" and "64.0" are integers too; nan, inf and 4.5 are not
                if not number.is_integer():
                    raise ValueError(text) from None
                return int(number)
        if "float" in kind:
            if text.lower() in ("", "none") and "None" in kind:
                return None
            return float(text)
    except ValueError:
        shown = text if len(text) <= 40 else text[:37] + "..."
        raise ConfigError(f"[{INI_SECTION[section]}] {key}: expected {kind}, got {shown!r}") from None
    return text


def _check_value(section: str, f: dataclasses.Field, value) -> None:
    where = f"[{INI_SECTION[section]}] {f.name}"
    choices = _CHOICES.get((section, f.name))
    if choices is not None and value not in choices:
        raise ValueError(f"{where} must be one of {', '.join(choices)}, got {value!r}")
    if f.type == "bool" and not isinstance(value, bool):
        raise TypeError(f"{where} must be true or false, got {value!r}")
    if (section, f.name) in RANGES and value is not None:
        low, high = RANGES[section, f.name]
        if f.type == "int":
            integer(where, value, low, high)
        else:
            number(where, value, low, high)


def validate(config: Config) -> None:
    """Raises ConfigError naming the first value that is out of its range or choices, or of the wrong type."""
    if not isinstance(config.run_name, str):
        raise ConfigError(f"[general] run_name must be a string, got {config.run_name!r}")
    for section in ("array", "mapping", "memory", "dram", "energy", "run"):
        part = getattr(config, section)
        for f in dataclasses.fields(part):
            try:
                _check_value(section, f, getattr(part, f.name))
            except (TypeError, ValueError) as error:
                raise ConfigError(str(error)) from None
    if config.memory.policy == "direct" and config.memory.ways != 1:
        raise ConfigError("[memory] ways must be 1 with policy = direct")


def _syntax_error(path: pathlib.Path, error: configparser.Error) -> str:
    """ "FILE:LINE: what is wrong" for configparser's errors (whose own text repeats the file name)."""
    if isinstance(error, configparser.DuplicateOptionError):
        return f"{path}:{error.lineno}: key {error.option!r} appears twice in [{error.section}]"
    if isinstance(error, configparser.DuplicateSectionError):
        return f"{path}:{error.lineno}: section [{error.section}] appears twice"
    if isinstance(error, configparser.MissingSectionHeaderError):
        return f"{path}:{error.lineno}: expected a [section] header first, got {error.line.strip()!r}"
    if isinstance(error, configparser.ParsingError):
        line, text = error.errors[0]  # text is already repr() of the line
        return f"{path}:{line}: cannot parse {text}"
    return f"{path}: {error.message}"


def load_config(path: str | pathlib.Path) -> Config:
    """Reads an INI file (or a preset name: "pointacc", "pointacc_edge").

    Raises:
        ConfigError: unreadable file (missing, not a regular file, over `MAX_FILE_BYTES`, not UTF-8), unknown
            section or key, bad value; the message names file, section, key.
    """
    path = pathlib.Path(path)
    if not path.suffix and not path.is_file() and (PRESETS / f"{path}.cfg").is_file():
        path = PRESETS / f"{path}.cfg"
    try:
        if not path.is_file():  # a folder, a device or a pipe could block or never end
            raise ConfigError(
                f"cannot read config {path}: {'not a file' if path.exists() else 'no such file'}"
            )
        with open(path, "rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as error:
        raise ConfigError(f"cannot read config {path}: {error.strerror or error}") from None
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError(f"{path}: a config file is at most {MAX_FILE_BYTES} bytes")
    # No interpolation: SCALE-Sim files use none, and "%" in a value must not be an error later on.
    parser = configparser.ConfigParser(inline_comment_prefixes=("#", ";"), interpolation=None)
    try:
        parser.read_string(data.decode("utf-8"), source=str(path))
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text (byte {error.start})") from None
    except configparser.Error as error:
        raise ConfigError(_syntax_error(path, error)) from None
    changes: dict[str, object] = {}
    for section in parser.sections():
        canonical = section.lower()
        if canonical not in SECTIONS:
            raise ConfigError(f"{path}: unknown section [{section}]; expected one of {', '.join(SECTIONS)}")
        target = SECTIONS[canonical]
        for key, value in parser.items(section):
            name = ALIASES.get(canonical, {}).get(key, key) if key in ALIASES.get(canonical, {}) else key
            if name is None:
                continue  # a SCALE-Sim key with no meaning here
            if name == "dram.bandwidth_words":
                continue  # SCALE-Sim's Bandwidth is in words per cycle; resolved below
            if target == "general":
                if name != "run_name":
                    raise ConfigError(f"{path}: unknown key {key!r} in [{section}]")
                changes["run_name"] = value
                continue
            if name not in _fields(target):
                raise ConfigError(f"{path}: unknown key {key!r} in [{section}]")
            if (target, name) == ("run", "interface_bandwidth"):
                value = value.strip().lower()  # SCALE-Sim writes USER / CALC
            changes[f"{target}.{name}"] = value
    scale_bandwidth = (
        parser.has_option("architecture_presets", "bandwidth")
        if parser.has_section("architecture_presets")
        else False
    )
    try:
        config = Config().replace(**changes)
        if scale_bandwidth and "dram.bandwidth_gbps" not in changes:
            first = parser.get("architecture_presets", "bandwidth").split(",")[0]  # SCALE-Sim uses bws[0]
            words = _coerce("dram", "bandwidth_gbps", first)
            gbps = words * config.array.element_bytes * config.array.clock_ghz
            config = config.replace(**{"dram.bandwidth_gbps": gbps})
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None
    return config
