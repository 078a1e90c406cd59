"""Typed, strict configuration: dataclasses where unknown keys are errors, values checked by pydantic.

A config section is a (frozen or not) dataclass. A field declares its type, its default and, optionally, its
constraints and one-line help in the annotation:

    lr: Annotated[float, Field(gt=0, description="initial learning rate")] = 0.01

pydantic checks every value against its field's annotation (``Literal`` choices, ``int | Literal["epoch"]``,
tuples, bounds); numbers must be finite unless a field says ``Field(allow_inf_nan=True)``. Plain and string
annotations work as well (plugins need not import pydantic). A field's help is its ``description``, else the
comment on its line in the source.

``--set section.key=value`` parses value with YAML rules (numbers, booleans, lists ``[0,80]``, ``none``); a text
field takes the text as typed. The resolved tree is saved as config.yaml together with a hash of everything that
can change the numbers, so two results can be compared or refused.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import hashlib
import inspect
import io
import json
import re
import textwrap
import tokenize
import types
import typing
from typing import Any

from ssbench.errors import ConfigError

# Non-finite numbers are refused everywhere unless a field allows them; YAML numbers may fill text fields.
_VALIDATION = {"allow_inf_nan": False, "coerce_numbers_to_str": True, "arbitrary_types_allowed": True}


@functools.cache
def field_types(cls) -> dict[str, Any]:
    """Field name -> resolved annotation (``Annotated`` metadata kept) of dataclass ``cls``."""
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise ConfigError(f"config class {getattr(cls, '__module__', '?')}.{getattr(cls, '__qualname__', cls)}: "
                          "not a dataclass (a Config must be one)")
    try:
        hints = typing.get_type_hints(cls, include_extras=True)
    except Exception as exc:  # an annotation naming something its module does not define
        raise ConfigError(f"config class {cls.__module__}.{cls.__qualname__}: cannot resolve its field types "
                          f"({type(exc).__name__}: {exc})") from None
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _adapter(tp):
    try:
        return _cached_adapter(tp)
    except TypeError as exc:  # unhashable metadata in an annotation: build it each time
        if "unhashable" not in str(exc):
            raise
        return _new_adapter(tp)


def _new_adapter(tp):
    from pydantic import ConfigDict, TypeAdapter

    return TypeAdapter(tp, config=ConfigDict(**_VALIDATION))


_cached_adapter = functools.cache(_new_adapter)


def _strip(tp):
    """(base type, metadata) of a possibly ``Annotated`` type; a pydantic Field's constraints are flattened in."""
    if typing.get_origin(tp) is typing.Annotated:
        base, *meta = typing.get_args(tp)
        inner, more = _strip(base)
        flat = [x for m in meta for x in (m, *(getattr(m, "metadata", None) or ()))]
        return inner, flat + more
    return tp, []


def _atoms(tp) -> list:
    """The alternatives of a (possibly Optional/Union/Annotated) type, each still carrying its metadata."""
    base, _ = _strip(tp)
    if typing.get_origin(base) in (typing.Union, types.UnionType):
        return [a for arg in typing.get_args(base) for a in _atoms(arg)]
    return [tp]


def _section_type(tp):
    """The dataclass type of a nested section field, else None."""
    base, _ = _strip(tp)
    return base if isinstance(base, type) and dataclasses.is_dataclass(base) else None


def _is(atom, kind) -> bool:
    return _strip(atom)[0] is kind


def _is_word_choice(atom) -> bool:
    base = _strip(atom)[0]
    return typing.get_origin(base) is typing.Literal and all(isinstance(v, str) for v in typing.get_args(base))


def _is_tuple(atom) -> bool:
    base = _strip(atom)[0]
    return base in (tuple, list) or typing.get_origin(base) in (tuple, list)


def _prepare(value: Any, tp) -> Any:
    """The few conversions pydantic does not make the way a config file or ``--set`` means them."""
    atoms = _atoms(tp)
    if any(_is(a, Any) for a in atoms):
        return value
    if isinstance(value, str) and value.strip().lower() in ("none", "null") and any(_is(a, type(None)) for a in atoms):
        return None
    if isinstance(value, bool) and not any(_is(a, bool) or _is(a, str) for a in atoms):
        raise _NotAllowed()  # pydantic would read true as 1
    if isinstance(value, str) and any(_is_tuple(a) for a in atoms) and not any(_is(a, str) for a in atoms):
        value = [parse_value(v.strip()) for v in value.strip().strip("()[]").split(",") if v.strip()]
    return value


class _NotAllowed(Exception):
    pass


def check_value(value: Any, tp, where: str, shown: str | None = None) -> Any:
    """``value`` validated against annotation ``tp``; a ConfigError naming ``where``, the value and what is
    allowed otherwise."""
    from pydantic import ValidationError

    section = _section_type(tp)
    if section is not None:
        if isinstance(value, section):
            return check_section(value, where)
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping of {section.__name__} fields, got {value!r}")
        return from_dict(section, value, where)
    shown = _show(value) if shown is None else shown
    try:
        adapter = _adapter(tp)
    except Exception as exc:  # an annotation pydantic cannot check (a plugin's exotic type)
        raise ConfigError(f"{where}: cannot check values of type {tp} ({type(exc).__name__})") from None
    try:
        return adapter.validate_python(_prepare(value, tp))
    except _NotAllowed:
        raise ConfigError(f"{where}={shown}: expected {allowed(tp)}") from None
    except ValidationError as exc:
        custom = [e["msg"] for e in exc.errors(include_url=False) if e["type"] in ("value_error", "assertion_error")]
        detail = f" ({custom[0]})" if custom else ""
        raise ConfigError(f"{where}={shown}: expected {allowed(tp)}{detail}") from None


def _show(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_show(v) for v in value) + "]"
    return str(value)


def from_dict(cls, data: Any, where: str = ""):
    """Build dataclass ``cls`` from a mapping (a config.yaml section); unknown keys are errors."""
    types_ = field_types(cls)
    if not isinstance(data, dict):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping of fields, got {_show(data)!r}")
    unknown = sorted(set(map(str, data)) - set(types_))
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(f"unknown config key {prefix}{unknown[0]} (known: {', '.join(sorted(types_))})")
    kwargs = {k: check_value(v, types_[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:  # the class's own check (__post_init__): a plugin's way to refuse a value
        raise ConfigError(f"{where or cls.__name__}: {exc}") from None


def check_section(obj, where: str):
    """Validate every current value of dataclass instance ``obj`` (e.g. after code replaced some); return it."""
    types_ = field_types(type(obj))
    for name, tp in types_.items():
        check_value(getattr(obj, name), tp, f"{where}.{name}" if where else name)
    return obj


def to_dict(obj) -> dict:
    out = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v):
            v = to_dict(v)
        elif isinstance(v, tuple):
            v = list(v)
        out[f.name] = v
    return out


_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def parse_value(text: str) -> Any:
    """Parse a ``--set`` value with YAML rules (numbers, booleans, lists, null) but keep plain words as strings.
    Exponents without a dot (1e-4), which YAML 1.1 reads as text, are numbers here."""
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        return float(value)
    return value


def apply_override(obj, dotted: str, raw: str, label: str | None = None):
    """Return a copy of dataclass tree ``obj`` with ``dotted`` (e.g. ``iters``) set from text ``raw``.

    ``label`` is the name the user typed (e.g. ``train.iters``), used in error messages.
    """
    return _set_path(obj, dotted.split("."), raw, label or dotted)


def _set_path(obj, parts: list[str], raw: str, dotted: str):
    types_ = field_types(type(obj))
    key = parts[0]
    if key not in types_:
        raise ConfigError(f"--set {dotted}: unknown key {key!r} (known: {', '.join(sorted(types_))})")
    current = getattr(obj, key)
    if len(parts) == 1:
        if _section_type(types_[key]) is not None:
            raise ConfigError(f"--set {dotted}: {key!r} is a section; name one of its fields")
        tp = types_[key]
        atoms = _atoms(tp)
        # text stays text for a str field, and for a choice among words, which YAML would otherwise turn into
        # booleans ('on', 'off', 'yes', 'no')
        textual = any(_is(a, str) for a in atoms) or all(_is_word_choice(a) or _is(a, type(None)) for a in atoms)
        value = raw if textual and raw.strip().lower() not in ("none", "null") else parse_value(raw)
        new = check_value(value, tp, f"--set {dotted}", shown=raw)
    else:
        if _section_type(types_[key]) is None:
            raise ConfigError(f"--set {dotted}: {key!r} has no sub-keys")
        new = _set_path(current, parts[1:], raw, dotted)
    try:
        return dataclasses.replace(obj, **{key: new})
    except (ValueError, TypeError) as exc:  # the class's own check (__post_init__): a plugin's way to refuse a value
        raise ConfigError(f"--set {dotted}={raw}: {exc}") from None


def config_hash(data: dict) -> str:
    """Stable short hash of a JSON-able mapping."""
    canon = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canon.encode()).hexdigest()[:16]


# --- what a field allows, and its help: for error messages and ``ssbench config --help-fields`` ----------------


def allowed(tp) -> str:
    """What annotation ``tp`` accepts, in words: 'a finite number > 0', 'one of sgd, adamw', ..."""
    return " or ".join(dict.fromkeys(_describe_atom(a) for a in _atoms(tp)))


def _describe_atom(atom) -> str:
    base, meta = _strip(atom)
    origin = typing.get_origin(base)
    finite = not any(getattr(m, "allow_inf_nan", None) is True for m in meta)
    if base is type(None):
        return "none"
    if base is Any:
        return "any value"
    if origin is typing.Literal:
        values = [_show(v) for v in typing.get_args(base)]
        return values[0] if len(values) == 1 else "one of " + ", ".join(values)
    if base is bool:
        return "true or false"
    if base is str:
        text = "text"
    elif base is int:
        text = "an integer"
    elif base is float:
        text = "a finite number" if finite else "a number"
    elif origin in (tuple, list) or base in (tuple, list):
        args = typing.get_args(base)
        if len(args) == 2 and args[1] is Ellipsis or origin is list:
            return f"a list of {_plural(args[0]) if args else 'values'}"
        if not args:
            return "a list"
        kinds = dict.fromkeys(_plural(a) for a in args)
        return f"a list of {len(args)} {' / '.join(kinds)}"
    else:
        text = getattr(base, "__name__", str(base))
    bounds = _bounds(meta)
    return f"{text} {bounds}" if bounds else text


def _plural(tp) -> str:
    word = {int: "integers", float: "numbers", str: "texts", bool: "booleans"}.get(_strip(tp)[0])
    return word or allowed(tp)


def _bounds(meta) -> str:
    parts = []
    for m in meta:
        for attr, sign in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
            v = getattr(m, attr, None)
            if v is not None:
                parts.append(f"{sign} {v:g}" if isinstance(v, float) else f"{sign} {v}")
        if getattr(m, "multiple_of", None) is not None:
            parts.append(f"a multiple of {m.multiple_of}")
    return " and ".join(parts)


@dataclasses.dataclass(frozen=True)
class FieldDoc:
    name: str
    default: Any
    allowed: str
    help: str


def field_docs(cls) -> list[FieldDoc]:
    """Every field of dataclass ``cls`` with its default, what it allows and its one-line help."""
    comments = _source_comments(cls)
    docs = []
    for f in dataclasses.fields(cls):
        tp = field_types(cls)[f.name]
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        help_ = next((m.description for m in _strip(tp)[1] if getattr(m, "description", None)), None)
        help_ = (help_ or comments.get(f.name, "")).strip().splitlines()
        docs.append(FieldDoc(f.name, default, allowed(tp), help_[0] if help_ else ""))
    return docs


@functools.cache
def _source_comments(cls) -> dict[str, str]:
    """Field name -> the comment on its line (else the comment lines right above it), from the class source."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            src = textwrap.dedent(inspect.getsource(klass))
            tree = ast.parse(src)
            comments = {t.start[0]: t.string.lstrip("#").strip()
                        for t in tokenize.generate_tokens(io.StringIO(src).readline) if t.type == tokenize.COMMENT}
        except (OSError, TypeError, SyntaxError, tokenize.TokenError):
            continue
        lines = src.splitlines()
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node in body:
            if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
                continue
            text = comments.get(node.lineno) if node.lineno == node.end_lineno else None
            text = text or comments.get(node.end_lineno)
            if not text:
                above, k = [], node.lineno - 1
                while k in comments and lines[k - 1].lstrip().startswith("#"):
                    above.insert(0, comments[k])
                    k -= 1
                text = " ".join(above)
            if text:
                out[node.target.id] = text
    return out
