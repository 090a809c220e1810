"""Tokenizers, corpora and batch sampling.

* :class:`ByteTokenizer` (default): UTF-8 bytes, vocab 256, no specials. Bits per byte = loss / ln 2.
* :class:`BPETokenizer`: a ``tokenizers`` tokenizer: byte-level BPE trained locally (``bpe:<name>``), or a
  pretrained model's own ``tokenizer.json`` (``hf:<name>``). Its serialized JSON travels in every checkpoint.
* :func:`check_tokenizer`: a tokenizer that is not the model's (another name, or more tokens than its vocabulary)
  is an error naming both.
* :func:`builtin_corpus`: an offline corpus built from this Python's own standard-library docstrings
  (a fixed, sorted module list, walked with :mod:`inspect`), split train/validation by hashing document names.
* :func:`kjv_corpus`: real English text no one here wrote, installed offline: the King James Bible of the Debian
  package ``bible-kjv`` (text in ``bible-kjv-text``), one document per chapter (1,189), split train/validation by
  the same hash rule on the chapter's name (``"Ge 1"`` ... ``"Rev 22"``).
* :func:`load_text_files`, :func:`load_hf_dataset` (lazy import of ``datasets``; never used in tests).
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

from bitmos.errors import BitmosUserError

try:
    from bitmos.fileio import write_bytes_atomic
except ImportError:  # pragma: no cover - the core package always has it
    def write_bytes_atomic(path, data):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)

CORPUS_VERSION = 1
VAL_PERCENT = 5  # documents whose name hashes to < 5 (mod 100) are validation

# A fixed, sorted list of pure-Python stdlib modules with rich docstrings (present on every CPython 3.10+).
STDLIB_MODULES = sorted("""
abc argparse ast asyncio base64 bisect calendar cmd codecs collections colorsys concurrent.futures configparser
contextlib copy csv dataclasses datetime decimal difflib dis doctest email email.message enum filecmp fileinput
fnmatch fractions ftplib functools getopt gettext glob graphlib gzip hashlib heapq hmac html html.parser
http.client http.cookiejar http.server imaplib inspect io ipaddress json json.decoder json.encoder keyword
linecache locale logging logging.handlers lzma mailbox mimetypes numbers operator optparse os pathlib pdb
pickle pickletools pkgutil platform plistlib poplib pprint profile pstats queue quopri random re reprlib
sched secrets selectors shelve shlex shutil smtplib socket socketserver statistics string stringprep struct
subprocess symtable tabnanny tarfile tempfile textwrap threading timeit token tokenize tomllib trace
traceback tracemalloc turtle types typing unittest unittest.mock urllib.parse urllib.request uuid warnings
wave weakref webbrowser xml.dom.minidom xml.etree.ElementTree xml.sax zipapp zipfile zoneinfo
""".split())


class ByteTokenizer:
    """UTF-8 bytes as tokens: vocab 256, lossless, no training."""

    name = "byte"
    spec = "byte"
    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")


class BPETokenizer:
    """Byte-level BPE from the optional ``tokenizers`` package (``pip install bitmos[hf]``)."""

    def __init__(self, tok, name: str = "bpe", kind: str = "bpe"):
        self.tok, self.name, self.kind = tok, name, kind
        self.vocab_size = tok.get_vocab_size()

    @property
    def spec(self) -> str:
        """The ModelConfig.tokenizer value of a model using this tokenizer: ``bpe:<name>`` or ``hf:<name>``."""
        return f"{self.kind}:{self.name}"

    def to_json(self) -> str:
        return self.tok.to_str()

    @classmethod
    def from_json(cls, text: str, spec: str) -> "BPETokenizer":
        try:
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise BitmosUserError("this model's tokenizer needs the 'tokenizers' package: "
                                  "pip install 'bitmos[hf]'") from exc
        kind, _, name = spec.partition(":")
        return cls(Tokenizer.from_str(text), name, kind)

    @classmethod
    def train(cls, texts, vocab_size: int = 1024, name: str = "bpe") -> "BPETokenizer":
        try:
            from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
        except ImportError as exc:
            raise BitmosUserError("BPE needs the 'tokenizers' package: pip install 'bitmos[hf]'") from exc
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(texts, trainer)
        return cls(tok, name)

    @classmethod
    def from_file(cls, path, name: str | None = None, kind: str = "bpe") -> "BPETokenizer":
        try:
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise BitmosUserError("a tokenizer.json needs the 'tokenizers' package: pip install 'bitmos[hf]'") from exc
        try:
            tok = Tokenizer.from_file(str(path))
        except Exception as exc:   # tokenizers raises a bare Exception on malformed JSON
            raise BitmosUserError(f"cannot read tokenizer {path}: {exc}") from exc
        return cls(tok, name or Path(path).stem, kind)

    def save(self, path) -> None:
        write_bytes_atomic(path, self.tok.to_str().encode("utf-8"))

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text).ids

    def decode(self, ids) -> str:
        return self.tok.decode([int(i) for i in ids])


def describe_tokenizer(tok) -> str:
    return f"{tok.spec!r} ({tok.vocab_size} tokens)"


def check_tokenizer(config, tok, what: str = "model") -> None:
    """Raise if ``tok`` is not the tokenizer of a model with ``config``: the error names both.

    The rule: the tokenizer's spec (``byte``, ``bpe:<name>``, ``hf:<name>``) equals ``config.tokenizer`` and its
    token ids fit the embedding (``tok.vocab_size <= config.vocab_size``; pretrained vocabularies are often padded).
    """
    if tok.spec != config.tokenizer or tok.vocab_size > config.vocab_size:
        raise BitmosUserError(
            f"tokenizer mismatch: {what} uses tokenizer {config.tokenizer!r} with a vocabulary of {config.vocab_size}, "
            f"but the tokenizer given is {describe_tokenizer(tok)}")


def check_same_tokenizer(a, a_what: str, b, b_what: str) -> None:
    """Two tokenizers (e.g. a checkpoint's and one given by the user) must be the same: both bytes, or the same
    serialized vocabulary and rules (names may differ: a copy of a model's tokenizer.json is that tokenizer)."""
    if isinstance(a, ByteTokenizer) or isinstance(b, ByteTokenizer):
        same = isinstance(a, ByteTokenizer) and isinstance(b, ByteTokenizer)
    else:
        same = a.vocab_size == b.vocab_size and a.to_json() == b.to_json()
    if not same:
        raise BitmosUserError(f"tokenizer mismatch: {a_what} has tokenizer {describe_tokenizer(a)}, "
                              f"{b_what} has {describe_tokenizer(b)}")


def tokenizer_for(config, embedded: str | None = None, directory=None):
    """The tokenizer of a model: byte, the serialized one embedded in its checkpoint, or (older BPE checkpoints)
    ``<directory>/<name>.json``; checked against the config."""
    if config.tokenizer == "byte":
        tok = ByteTokenizer()
    elif embedded:
        tok = BPETokenizer.from_json(embedded, config.tokenizer)
    elif config.tokenizer.startswith("bpe:"):
        tok = get_tokenizer(config.tokenizer, directory)
    else:
        raise BitmosUserError(f"model uses tokenizer {config.tokenizer!r} but its checkpoint carries none")
    check_tokenizer(config, tok)
    return tok


def get_tokenizer(name: str = "byte", directory=None):
    """``"byte"``, or ``"bpe:<name>"`` loaded from ``<directory>/<name>.json``."""
    if name == "byte":
        return ByteTokenizer()
    if name.startswith("bpe:"):
        from bitmos.fileio import check_safe_name
        # the name comes from a config or a checkpoint: it must not reach outside ``directory``
        path = Path(directory or ".") / f"{check_safe_name(name[4:], 'BPE tokenizer name')}.json"
        if not path.exists():
            raise BitmosUserError(f"BPE tokenizer file {path} not found")
        return BPETokenizer.from_file(path)
    raise BitmosUserError(f"unknown tokenizer {name!r} (use 'byte' or 'bpe:<name>')")


# -- corpora ---------------------------------------------------------------------------------------------------

def is_validation(doc_name: str) -> bool:
    """Deterministic split: sha256 of the document name, mod 100, below VAL_PERCENT."""
    return int(hashlib.sha256(doc_name.encode("utf-8")).hexdigest()[:8], 16) % 100 < VAL_PERCENT


def stdlib_documents() -> list[tuple[str, str]]:
    """[(name, text)] from the docstrings of STDLIB_MODULES: module, classes, functions, methods, sorted by name."""
    docs: dict[str, str] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for modname in STDLIB_MODULES:
            try:
                mod = importlib.import_module(modname)
            except Exception:   # a module missing from this build (e.g. no _tkinter for turtle): skip
                continue
            _collect(mod, modname, docs, depth=0, owner=mod.__name__)
    return sorted(docs.items())


def _collect(obj, name, docs, depth, owner):
    doc = inspect.getdoc(obj) if not isinstance(obj, type) or obj.__doc__ else None
    if doc and len(doc) >= 40 and name not in docs:
        docs[name] = f"{name}\n{doc.strip()}\n"
    if depth >= 2:
        return
    try:
        members = sorted(vars(obj).items()) if (inspect.ismodule(obj) or inspect.isclass(obj)) else []
    except TypeError:
        return
    for attr, val in members:
        if attr.startswith("_"):
            continue
        if not (inspect.isclass(val) or inspect.isfunction(val) or inspect.ismethoddescriptor(val)):
            continue
        if getattr(val, "__module__", owner) != owner:   # only things defined in this module
            continue
        _collect(val, f"{name}.{attr}", docs, depth + 1, owner)


def default_cache_dir() -> Path:
    return Path(os.environ.get("BITMOS_CACHE", Path.home() / ".cache" / "bitmos"))


def builtin_corpus(cache_dir=None) -> tuple[str, str]:
    """(train_text, val_text) of the built-in stdlib-docstring corpus, built once and cached.

    The cache key includes the Python version: the corpus is deterministic for a given interpreter.
    """
    cache = Path(cache_dir or default_cache_dir())
    tag = f"stdlib-py{sys.version_info.major}.{sys.version_info.minor}-v{CORPUS_VERSION}"
    tp, vp = cache / f"{tag}.train.txt", cache / f"{tag}.val.txt"
    if tp.exists() and vp.exists():
        return tp.read_text("utf-8"), vp.read_text("utf-8")
    train, val = [], []
    for name, text in stdlib_documents():
        (val if is_validation(name) else train).append(text)
    tt, vt = "\n".join(train), "\n".join(val)
    write_bytes_atomic(tp, tt.encode("utf-8"))
    write_bytes_atomic(vp, vt.encode("utf-8"))
    return tt, vt


# -- the King James Bible (Debian bible-kjv) ---------------------------------------------------------------------

KJV_VERSION = 1
KJV_PACKAGE = "bible-kjv"              # Debian: the reader `bible`; it depends on bible-kjv-text (the data)
KJV_PROGRAM = "bible"
KJV_RANGE = "Gen1:1-Rev22:21"           # the whole text: 66 books, 1,189 chapters, 31,102 verses
_KJV_VERSE = re.compile(r"^([1-3]?[A-Za-z]+)(\d+):(\d+) (.*)$")   # "Ge1:1 In the beginning ..." ("1Cor13:4 ...")


def _kjv_missing(detail: str) -> BitmosUserError:
    return BitmosUserError(f"the kjv corpus needs the King James text of the Debian package {KJV_PACKAGE} "
                           f"(apt-get install {KJV_PACKAGE}): {detail}")


def kjv_dump() -> str:
    """The whole KJV text, one verse per line with its reference (``bible -f Gen1:1-Rev22:21``)."""
    prog = shutil.which(KJV_PROGRAM)
    if prog is None:
        raise _kjv_missing(f"no {KJV_PROGRAM!r} program on PATH")
    try:
        out = subprocess.run([prog, "-f", KJV_RANGE], capture_output=True, text=True, timeout=120,
                             stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError) as exc:
        raise _kjv_missing(f"running {prog} failed: {exc}") from exc
    if out.returncode != 0 or not out.stdout.strip():
        err = (out.stderr or out.stdout).strip().splitlines()
        raise _kjv_missing(f"{prog} gave no text (exit {out.returncode}{': ' + err[0] if err else ''})")
    return out.stdout


def kjv_documents(dump: str, source: str = "bible output") -> list[tuple[str, str]]:
    """[(name, text)], one per chapter in canonical order; name ``"<book> <chapter>"`` (the reader's book
    abbreviations: ``Ge 1``, ``1Cor 13``, ``Rev 22``); text = the chapter's verses, one per line, without their
    references."""
    docs: dict[str, list[str]] = {}
    for n, line in enumerate(dump.splitlines(), 1):
        if not line.strip():
            continue
        m = _KJV_VERSE.match(line)
        if m is None:
            raise BitmosUserError(f"{source} line {n} is not a verse ('<Book><chapter>:<verse> <text>'): "
                                  f"{line[:60]!r}")
        docs.setdefault(f"{m.group(1)} {m.group(2)}", []).append(m.group(4).strip())
    if not docs:
        raise BitmosUserError(f"{source} holds no verse")
    return [(name, "\n".join(verses) + "\n") for name, verses in docs.items()]


def split_documents(docs) -> tuple[str, str]:
    """(train, val): a document is validation when :func:`is_validation` of its name; order kept."""
    train, val = [], []
    for name, text in docs:
        (val if is_validation(name) else train).append(text)
    if not val or not train:
        raise BitmosUserError(f"{len(docs)} documents give an empty {'validation' if not val else 'training'} split")
    return "\n".join(train), "\n".join(val)


def kjv_corpus(path=None, cache_dir=None) -> tuple[str, str]:
    """(train_text, val_text) of the King James Bible: chapters whose ``sha256("<book> <chapter>") mod 100 < 5``
    are validation (60 of 1,189 chapters: 208 kB of the 4.14 MB), the rest training.

    The text comes from the Debian package ``bible-kjv`` (``bible -f Gen1:1-Rev22:21``; extracted once and cached,
    like the built-in corpus), or from ``path``: a file holding that program's output (one verse per line with
    its reference), for a machine where the text is at hand but the package is not.
    """
    if path is not None:
        p = Path(path)
        try:
            dump = p.read_text("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise BitmosUserError(f"cannot read KJV text {p} ({exc.__class__.__name__}): write it with "
                                  f"'{KJV_PROGRAM} -f {KJV_RANGE} > {p}' (Debian package {KJV_PACKAGE}), "
                                  f"or use --corpus kjv") from exc
        return split_documents(kjv_documents(dump, str(p)))
    cache = Path(cache_dir or default_cache_dir())
    tag = f"kjv-v{KJV_VERSION}"
    tp, vp = cache / f"{tag}.train.txt", cache / f"{tag}.val.txt"
    if tp.exists() and vp.exists():
        return tp.read_text("utf-8"), vp.read_text("utf-8")
    tt, vt = split_documents(kjv_documents(kjv_dump()))
    write_bytes_atomic(tp, tt.encode("utf-8"))
    write_bytes_atomic(vp, vt.encode("utf-8"))
    return tt, vt


def load_text_files(paths, val_fraction: float = 0.05) -> tuple[str, str]:
    """Local text files -> (train, val); the last ``val_fraction`` of each file is validation."""
    train, val = [], []
    for p in sorted(str(p) for p in paths):
        try:
            text = Path(p).read_text("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise BitmosUserError(f"cannot read text file {p}: {exc}") from exc
        cut = int(len(text) * (1 - val_fraction))
        train.append(text[:cut])
        val.append(text[cut:])
    return "\n".join(train), "\n".join(val)


def load_hf_dataset(name: str, config: str | None = None, text_field: str = "text",
                    max_chars: int = 50_000_000) -> tuple[str, str]:
    """A Hugging Face dataset (needs ``datasets`` and network/cache) -> (train, val) text."""
    try:
        import datasets
    except ImportError as exc:
        raise BitmosUserError("loading a Hugging Face dataset needs: pip install 'bitmos[hf]'") from exc
    out = []
    for split in ("train", "validation"):
        ds = datasets.load_dataset(name, config, split=split)
        buf, n = [], 0
        for row in ds:
            buf.append(row[text_field])
            n += len(buf[-1])
            if n >= max_chars:
                break
        out.append("\n".join(buf))
    return out[0], out[1]


def load_corpus(spec: str = "builtin", cache_dir=None) -> tuple[str, str]:
    """``builtin`` | ``kjv`` | ``kjv:<file>`` | ``files:<path>[,<path>...]`` | ``hf:<name>[:<config>]``."""
    if spec == "builtin":
        return builtin_corpus(cache_dir)
    if spec == "kjv":
        return kjv_corpus(cache_dir=cache_dir)
    if spec.startswith("kjv:"):
        return kjv_corpus(spec[4:], cache_dir)
    if spec.startswith("files:"):
        return load_text_files([p for p in spec[6:].split(",") if p])
    if spec.startswith("hf:"):
        parts = spec[3:].split(":")
        return load_hf_dataset(parts[0], parts[1] if len(parts) > 1 else None)
    raise BitmosUserError(f"unknown corpus {spec!r} (use builtin, kjv, kjv:<file>, files:<paths> or "
                          "hf:<name>[:<config>])")


def encode_corpus(text: str, tokenizer) -> torch.Tensor:
    """1-D int64 token tensor."""
    if isinstance(tokenizer, ByteTokenizer):
        return torch.from_numpy(np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64))
    return torch.tensor(tokenizer.encode(text), dtype=torch.int64)


def get_batch(tokens: torch.Tensor, batch_size: int, seq_len: int, generator: torch.Generator):
    """Random windows: x (B, T) and the next-token targets y (B, T)."""
    assert tokens.numel() > seq_len + 1, f"corpus of {tokens.numel()} tokens is shorter than seq_len {seq_len}"
    ix = torch.randint(tokens.numel() - seq_len - 1, (batch_size,), generator=generator)
    x = torch.stack([tokens[i:i + seq_len] for i in ix.tolist()])
    y = torch.stack([tokens[i + 1:i + 1 + seq_len] for i in ix.tolist()])
    return x, y


def eval_windows(tokens: torch.Tensor, seq_len: int, max_tokens: int | None = None):
    """Non-overlapping (x, y) windows over the first ``max_tokens`` tokens: a deterministic validation set."""
    n = tokens.numel() - 1
    if max_tokens is not None:
        n = min(n, max_tokens)
    nw = n // seq_len
    assert nw >= 1, f"validation text of {tokens.numel()} tokens is shorter than seq_len {seq_len}"
    x = tokens[:nw * seq_len].view(nw, seq_len)
    y = tokens[1:nw * seq_len + 1].view(nw, seq_len)
    return x, y
