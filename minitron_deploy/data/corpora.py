"""Built-in corpora (`builtin:<name>`): text every machine has, read without a download.

Each corpus is one *domain* (Python code, Python documentation, package documentation, licences,
Unix manual pages) read from files the running Python or the operating system's packages
ship; composites join domains. A domain can be kept whole out of training and calibration
(`data.holdout` in a profile) to measure how a student does on text of a kind it never saw - a
domain-level hold-out, stricter than the document-level validation split.

Large domains are capped: files are taken in the order of a hash of their path until the cap,
so the choice is spread over the whole folder and fixed for a given set of files. Every corpus
lists its files, so its content digest (and every cache key built on it) follows the text.
"""

from __future__ import annotations

import gzip
import hashlib
import re
import sysconfig
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

DOC_ROOT = Path("/usr/share/doc")
MAN_ROOT = Path("/usr/share/man")
LICENSE_ROOT = Path("/usr/share/common-licenses")
INFO_ROOT = Path("/usr/share/info")
PERL_ROOT = Path("/usr/share/perl")
INCLUDE_ROOT = Path("/usr/include")
MAN_SECTIONS = ("man1", "man2", "man3", "man4", "man5", "man7", "man8")
MB = 1 << 20

Files = list[tuple[Path, str]]  # (path, id prefix)


def _stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _python_code() -> Files:
    root = _stdlib_root()
    return [
        (f, f"stdlib:{f.relative_to(root).as_posix()}")
        for f in sorted(root.rglob("*.py"))
        if f.relative_to(root).parts[0] not in ("site-packages", "dist-packages")
    ]


def _pydoc_topics() -> Files:
    import pydoc_data.topics

    return [(Path(pydoc_data.topics.__file__), "pydoc")]


_DOC_NAME = re.compile(r"^(readme|news|todo|faq|usage|howto)([._-].*)?$|.*\.(md|txt|rst)$", re.I)


def _package_docs() -> Files:
    """README / NEWS / *.md / *.txt files of the system's packages (not changelogs, not
    copyright files: those are the licences domain)."""
    if not DOC_ROOT.is_dir():
        return []
    out = []
    for f in sorted(DOC_ROOT.rglob("*")):
        name = f.name[:-3] if f.name.endswith(".gz") else f.name
        if f.is_file() and not f.is_symlink() and _DOC_NAME.match(name):
            out.append((f, f"doc:{f.relative_to(DOC_ROOT).as_posix()}"))
    return out


def _licenses() -> Files:
    out = []
    if LICENSE_ROOT.is_dir():
        out += [
            (f, f"license:{f.name}")
            for f in sorted(LICENSE_ROOT.iterdir())
            if f.is_file() and not f.is_symlink()
        ]
    if DOC_ROOT.is_dir():
        out += [
            (f, f"copyright:{f.parent.name}")
            for f in sorted(DOC_ROOT.glob("*/copyright"))
            if f.is_file() and not f.is_symlink()
        ]
    return out


def _manpages() -> Files:
    """English manual pages (sections 1-5, 7, 8) of the system's packages."""
    out = []
    for sec in MAN_SECTIONS:
        d = MAN_ROOT / sec
        if d.is_dir():
            out += [
                (f, f"man:{sec}/{f.name}")
                for f in sorted(d.iterdir())
                if f.is_file() and not f.is_symlink()
            ]
    return out


def _info_pages() -> Files:
    """GNU Info manuals (/usr/share/info/*.info*), the long-form prose of the system's tools."""
    if not INFO_ROOT.is_dir():
        return []
    return [
        (f, f"info:{f.name}")
        for f in sorted(INFO_ROOT.iterdir())
        if f.is_file() and not f.is_symlink() and ".info" in f.name
    ]


def _perl() -> Files:
    """Perl's core modules and their POD (/usr/share/perl/<version>/**/*.pm, *.pod)."""
    if not PERL_ROOT.is_dir():
        return []
    return [
        (f, f"perl:{f.relative_to(PERL_ROOT).as_posix()}")
        for f in sorted(PERL_ROOT.rglob("*"))
        if f.suffix in (".pm", ".pod") and f.is_file() and not f.is_symlink()
    ]


def _c_headers() -> Files:
    """C headers of the system's libraries (/usr/include/**/*.h)."""
    if not INCLUDE_ROOT.is_dir():
        return []
    return [
        (f, f"include:{f.relative_to(INCLUDE_ROOT).as_posix()}")
        for f in sorted(INCLUDE_ROOT.rglob("*.h"))
        if f.is_file() and not f.is_symlink()
    ]


_INFO_NODE = re.compile(r"^File: [^,\n]+,\s+Node:.*$", re.M)


def info_to_text(src: str) -> str:
    """Plain text of an Info file: node separators (0x1f) and node header lines dropped."""
    text = _INFO_NODE.sub("", src.replace("\x1f", "\n"))
    return re.sub(r"\n{3,}", "\n\n", text).strip()


_ROFF_ESCAPES = [
    (re.compile(r"\\f(\[[^\]]*\]|\(..|.)"), ""),  # font changes
    (re.compile(r"\\s[+-]?\d"), ""),  # size changes
    (re.compile(r"\\\((em|en)"), "-"),
    (re.compile(r"\\\((lq|rq|dq)"), '"'),
    (re.compile(r"\\\((aq|cq|oq)"), "'"),
    (re.compile(r"\\\(bu"), "*"),
    (re.compile(r"\\\[[^\]]*\]|\\\(.."), ""),  # other named glyphs
    (re.compile(r"\\\*(\[[^\]]*\]|\(..|.)"), ""),  # strings
    (re.compile(r"\\[-]"), "-"),
    (re.compile(r"\\[&|^%c:]"), ""),
    (re.compile(r"\\ "), " "),
    (re.compile(r"\\e"), "\\\\"),
]
_KEEP_MACROS = {"SS", "B", "I", "BR", "IR", "RB", "RI", "BI", "IB", "TP", "Nm"}


def roff_to_text(src: str) -> str:
    """Plain text of a man page's roff source: macro arguments kept for headings and fonts,
    other requests and escapes dropped, paragraphs separated by blank lines."""
    lines = []
    for line in src.splitlines():
        if line.startswith(('.\\"', "'\\\"", ".so ")):
            continue
        if line.startswith((".", "'")):
            parts = line[1:].strip().split(None, 1)
            if not parts:
                continue
            macro, arg = parts[0], parts[1] if len(parts) > 1 else ""
            if macro in ("SH", "Sh"):
                lines += ["", arg.strip('"').upper()]
            elif macro in ("PP", "LP", "P", "Pp", "sp", "br"):
                lines.append("")
            elif macro == "IP" and arg:  # .IP "tag" indent: the tag only
                tag = arg[1:].split('"', 1)[0] if arg.startswith('"') else arg.split()[0]
                lines.append(tag)
            elif macro in _KEEP_MACROS and arg:
                lines.append(arg.replace('"', ""))
            continue
        lines.append(line)
    text = "\n".join(lines)
    for pat, rep in _ROFF_ESCAPES:
        text = pat.sub(rep, text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def read_text(path: Path) -> str | None:
    """A file's text (gunzipped where it ends in .gz); None for binary or unreadable files."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile):
        return None
    if b"\0" in raw[:4096]:
        return None
    return raw.decode("utf-8", errors="replace")


@dataclass(frozen=True)
class Domain:
    """One built-in text domain."""

    kind: str  # "code" or "prose"
    about: str
    files: Callable[[], Files]
    convert: Callable[[str], str] | None = None  # file text -> document text
    cap_mb: int | None = None  # at most this many (stored) megabytes of files


@dataclass(frozen=True)
class Corpus:
    """A built-in corpus: domains (name, cap in MB or None for the domain's own)."""

    about: str
    members: tuple[tuple[str, int | None], ...] = field(default_factory=tuple)


DOMAINS: dict[str, Domain] = {
    "python-code": Domain(
        "code", "the running Python's standard library sources (*.py)", _python_code
    ),
    "pydoc-topics": Domain("prose", "the running Python's pydoc help topics", _pydoc_topics),
    "package-docs": Domain(
        "prose",
        "README / NEWS / *.md / *.txt of the system's packages (/usr/share/doc)",
        _package_docs,
        cap_mb=8,
    ),
    "licenses": Domain(
        "prose",
        "licence texts and package copyright files (/usr/share/common-licenses, "
        "/usr/share/doc/*/copyright)",
        _licenses,
        cap_mb=4,
    ),
    "manpages": Domain(
        "prose",
        "English Unix manual pages of the system's packages (/usr/share/man), roff stripped",
        _manpages,
        convert=roff_to_text,
        cap_mb=3,
    ),
    # Domains no built-in training corpus reads: held out whole by construction.
    "info-pages": Domain(
        "prose",
        "GNU Info manuals of the system's tools (/usr/share/info), node headers stripped",
        _info_pages,
        convert=info_to_text,
        cap_mb=3,
    ),
    "perl": Domain(
        "code",
        "Perl's core modules and their POD documentation (/usr/share/perl)",
        _perl,
        cap_mb=3,
    ),
    "c-headers": Domain(
        "code", "C headers of the system's libraries (/usr/include/**/*.h)", _c_headers, cap_mb=3
    ),
}

CORPORA: dict[str, Corpus] = {
    **{name: Corpus(d.about, ((name, None),)) for name, d in DOMAINS.items()},
    "python-stdlib": Corpus(
        "the running Python's standard library sources and pydoc topics",
        (("pydoc-topics", None), ("python-code", None)),
    ),
    "mixed": Corpus(
        "prose and code: Python docs, package docs, licences and 8 MB of the standard library "
        "(the default training corpus; hold out builtin:manpages)",
        (("pydoc-topics", None), ("package-docs", None), ("licenses", None), ("python-code", 8)),
    ),
}


def _capped(files: Files, cap_mb: int | None) -> Files:
    """Files taken in hash-of-id order until `cap_mb` stored megabytes; reading order kept."""
    if cap_mb is None:
        return files
    order = sorted(files, key=lambda fr: hashlib.sha256(fr[1].encode()).digest())
    keep, size = set(), 0
    for f, rel in order:
        n = f.stat().st_size
        if size + n > cap_mb * MB and keep:
            continue
        keep.add(rel)
        size += n
    return [fr for fr in files if fr[1] in keep]


def domains_of(name: str) -> list[str]:
    """The domain names a built-in corpus reads."""
    return [d for d, _ in CORPORA[name].members]


def corpus_files(name: str) -> list[tuple[str, Files]]:
    """(domain, files) of a built-in corpus, each domain capped."""
    out = []
    for dom, cap in CORPORA[name].members:
        d = DOMAINS[dom]
        out.append((dom, _capped(d.files(), cap if cap is not None else d.cap_mb)))
    return out


def corpus_documents(name: str, segments: Callable[[str], list[str]]) -> Iterator[tuple[str, str]]:
    """(document id, text) of a built-in corpus in a fixed order; `segments` cuts long text."""
    for dom, files in corpus_files(name):
        if dom == "pydoc-topics":
            import pydoc_data.topics

            topics = pydoc_data.topics.topics
            for key in sorted(topics):
                for k, seg in enumerate(segments(topics[key])):
                    yield f"pydoc:{key}#{k}", seg
            continue
        convert = DOMAINS[dom].convert
        for f, rel in files:
            text = read_text(f)
            if text is None:
                continue
            if convert is not None:
                text = convert(text)
            for k, seg in enumerate(segments(text)):
                yield f"{rel}#{k}", seg
