"""Readers for public recommender datasets, from their own files, streamed in chunks.

Each ``load_*`` function reads one dataset's published file format from a path the user gives
(nothing is downloaded) and returns an :class:`~jaxrec.data.log.InteractionLog` whose users and
items are encoded with :class:`~jaxrec.data.log.Vocab` (indices in sorted raw-id order), whose
timestamps are int64 unix seconds (date strings without a zone are read as UTC), and whose rating is
float32 when the format has one. :data:`FORMATS` maps a format name to its reader and :func:`load`
dispatches on it; experiment binaries take ``--dataset=FORMAT:PATH?option=value&...``
(:mod:`jaxrec.data.datasets`).

Streaming: delimited files go through ``pyarrow.csv.open_csv`` with a fixed block size, ``::``
files are cut into byte chunks at line ends, ``::`` replaced by a tab and parsed by pyarrow, JSON
lines go through ``pyarrow.json.open_json`` with an explicit schema (other fields ignored) and
Parquet through ``ParquetFile.iter_batches``. Each chunk is reduced at once to compact numpy
columns (integer raw ids as int32/int64, string raw ids dictionary-encoded per chunk), so the peak
memory is a small multiple of the final arrays, and the vocabularies are built once at the end.

Errors: a missing file, a missing column, a line with the wrong number of fields, an unparsable
number or date, a missing JSON field or an empty result raise :class:`~jaxrec.data.log.DataError`
naming the file, the line (1-based, counting a header) or the column, and what was expected. The
exact line is found by re-scanning the file in Python, which only happens on the error path.
"""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import inspect
import json
import logging
import os
from typing import Callable, Dict, Iterator, List, NamedTuple, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from jaxrec.data.log import DataError, InteractionLog, Vocab

_LOG = logging.getLogger(__name__)

BLOCK_BYTES = 1 << 24  # bytes per streamed chunk (16 MiB)
_MAX_FIXED_WIDTH = 64  # string vocabularies wider than this stay numpy object arrays
_INT32 = np.iinfo(np.int32)

MIND_TIME_FORMAT = "%m/%d/%Y %I:%M:%S %p"
YELP_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
TAOBAO_BEHAVIORS = ("pv", "buy", "cart", "fav")
_DICT = pa.dictionary(pa.int32(), pa.string())  # string ids dictionary-encoded by the CSV reader itself


class Source(NamedTuple):
  """A readable file: ``name`` for messages, ``open()`` -> binary stream, ``path`` when on disk."""
  name: str
  open: Callable[[], object]
  path: Optional[str] = None


def _source(path, default_name: Optional[str] = None) -> Source:
  """Resolves a path (a directory gets ``default_name`` appended); missing -> DataError."""
  if isinstance(path, Source):
    return path
  p = os.fspath(path)
  if os.path.isdir(p) and default_name:
    p = os.path.join(p, default_name)
  if not os.path.isfile(p):
    hint = f" (expected the dataset's own file, e.g. {default_name!r})" if default_name else ""
    raise DataError(f"{p}: file not found{hint}")
  opener = (lambda: gzip.open(p, "rb")) if p.endswith(".gz") else (lambda: open(p, "rb"))
  return Source(p, opener, p)


def _arrow_stream(src: Source):
  if src.path is not None:
    return pa.input_stream(src.path, compression="detect")
  return pa.PythonFile(src.open(), mode="r")


# -- line-level diagnosis (error path only) --------------------------------------------------------


def _is_int(v: str) -> bool:
  try:
    int(v)
    return True
  except ValueError:
    return False


def _is_float(v: str) -> bool:
  try:
    float(v)
    return True
  except ValueError:
    return False


def _time_check(fmt: Optional[str]) -> Callable[[str], bool]:
  """A Python check mirroring :func:`_to_seconds` on one string value."""
  def check(v: str) -> bool:
    v = v.strip()
    if fmt is not None:
      try:
        dt.datetime.strptime(v, fmt)
        return True
      except ValueError:
        return False
    if _is_float(v):
      return np.isfinite(float(v))
    try:
      dt.datetime.fromisoformat(v)
      return True
    except ValueError:
      return False
  return check


_TYPE_CHECKS = {"int": (_is_int, "an integer"), "float": (_is_float, "a number")}


def _type_check(t: pa.DataType):
  if pa.types.is_integer(t):
    return _TYPE_CHECKS["int"]
  if pa.types.is_floating(t):
    return _TYPE_CHECKS["float"]
  if pa.types.is_timestamp(t) or pa.types.is_date(t):
    return _time_check(None), "an ISO date/time"
  return None


def _diagnose_lines(src: Source, err: Exception, *, split: Callable[[str], List[str]],
                    names: Sequence[str], checks: Dict[str, tuple], header: bool) -> DataError:
  """Finds the first bad line of a delimited file; a DataError naming it and what was expected."""
  index = {n: i for i, n in enumerate(names)}
  seen = 0
  with src.open() as f:
    for lineno, raw in enumerate(f, 1):
      if header and lineno == 1:
        continue
      line = raw.decode("utf-8", "replace").rstrip("\r\n")
      if not line.strip():
        continue
      seen += 1
      fields = split(line)
      if len(fields) != len(names):
        return DataError(f"{src.name}, line {lineno}: expected {len(names)} fields ({', '.join(names)}), "
                         f"got {len(fields)}: {line[:200]!r}")
      for col, (check, what) in checks.items():
        v = fields[index[col]]
        if not check(v):
          return DataError(f"{src.name}, line {lineno}, column '{col}': expected {what}, got {v!r}")
  if not seen:
    return DataError(f"{src.name}: no data lines (empty file)")
  return DataError(f"{src.name}: cannot read: {err}")


def _diagnose_json(src: Source, err: Exception, kinds: Dict[str, tuple],
                   optional: Sequence[str] = ()) -> DataError:
  """Finds the first bad line of a JSON-lines file."""
  seen = 0
  with src.open() as f:
    for lineno, raw in enumerate(f, 1):
      if not raw.strip():
        continue
      seen += 1
      try:
        obj = json.loads(raw)
      except ValueError as e:
        return DataError(f"{src.name}, line {lineno}: invalid JSON ({e}): {raw[:200]!r}")
      if not isinstance(obj, dict):
        return DataError(f"{src.name}, line {lineno}: expected a JSON object, got {type(obj).__name__}")
      for field, (check, what) in kinds.items():
        if obj.get(field) is None:
          if field in optional:
            continue
          return DataError(f"{src.name}, line {lineno}: missing field '{field}' ({what}); "
                           f"the record has fields {sorted(obj)}")
        if not check(obj[field]):
          return DataError(f"{src.name}, line {lineno}, field '{field}': expected {what}, "
                           f"got {obj[field]!r}")
  if not seen:
    return DataError(f"{src.name}: no records (empty file)")
  return DataError(f"{src.name}: cannot read: {err}")


_J_STR = (lambda v: isinstance(v, str), "a string")
_J_INT = (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer")
_J_NUM = (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), "a number")


def _j_time(fmt):
  check = _time_check(fmt)
  return (lambda v: isinstance(v, str) and check(v), f"a date string like {fmt!r}")


# -- streaming readers -----------------------------------------------------------------------------


def _read_header(src: Source, delimiter: str, expected: Sequence[str]) -> List[str]:
  with src.open() as f:
    first = f.readline().decode("utf-8", "replace").lstrip("\ufeff").rstrip("\r\n")
  if not first:
    raise DataError(f"{src.name}: empty file, expected a header with columns {list(expected)}")
  names = [n.strip().strip('"') for n in first.split(delimiter)]
  missing = [c for c in expected if c not in names]
  if missing:
    raise DataError(f"{src.name}: missing column(s) {missing} in the header; the file has columns {names}")
  return names


def _csv_batches(src: Source, *, names: Optional[Sequence[str]], include: Sequence[str],
                 types: Dict[str, pa.DataType], delimiter: str = ",", multi: Optional[bytes] = None,
                 quoting: bool = True, checks: Optional[Dict[str, tuple]] = None,
                 required: Sequence[str] = (), header_rows: int = 0,
                 skipped: Optional[list] = None) -> Iterator:
  """Streams a delimited file as arrow batches holding the ``include`` columns.

  Args:
    names: the column names; None reads them from the header line.
    header_rows: lines to skip before the data when ``names`` is given (a typed header).
    include: the columns to keep; a header missing one raises DataError listing the header.
    types: arrow types per column (others are inferred from the first block).
    multi: a multi-byte delimiter (``b"::"``); chunks are cut at line ends and it becomes a tab.
    checks: extra per-column Python checks used to name a bad line.
    required: columns whose nulls (empty numeric fields) are an error.
    skipped: if a list, lines with the wrong number of fields are skipped and their line
      numbers appended to it instead of raising.
  """
  header = names is None or header_rows > 0
  if names is None:
    names = _read_header(src, delimiter, include)
    header_rows = 1
  names = list(names)
  all_checks = {}
  for col in include:
    tc = _type_check(types[col]) if col in types else None
    if tc is not None:
      all_checks[col] = tc
  all_checks.update(checks or {})
  delim_str = multi.decode() if multi else delimiter
  if quoting and not multi:
    split = lambda line: next(csv.reader([line], delimiter=delimiter))
  else:
    split = lambda line: line.split(delim_str)
  diagnose = lambda e: _diagnose_lines(src, e, split=split, names=names, checks=all_checks, header=header)
  convert = pacsv.ConvertOptions(column_types={c: t for c, t in types.items() if c in include},
                                 include_columns=list(include))
  handler = None
  if skipped is not None:
    handler = lambda row: skipped.append(row.number) or "skip"
  parse = pacsv.ParseOptions(delimiter="\t" if multi else delimiter, quote_char='"' if quoting else False,
                             invalid_row_handler=handler)
  read = pacsv.ReadOptions(column_names=names, skip_rows=header_rows, block_size=BLOCK_BYTES)
  try:
    for batch in (_multi_chunks(src, multi, read, parse, convert) if multi else
                  _open_csv(src, read, parse, convert)):
      for col in required:
        if batch.column(col).null_count:
          raise pa.ArrowInvalid(f"empty value in column {col}")
      yield batch
  except pa.ArrowInvalid as e:
    raise diagnose(e) from None


def _open_csv(src, read, parse, convert):
  with _arrow_stream(src) as stream:
    yield from pacsv.open_csv(stream, read_options=read, parse_options=parse, convert_options=convert)


def _multi_chunks(src, multi, read, parse, convert):
  """Byte chunks cut at line ends, ``multi`` -> tab, each parsed by pyarrow."""
  with src.open() as f:
    rest = b""
    while True:
      buf = f.read(BLOCK_BYTES)
      data = rest + buf
      if buf:
        cut = data.rfind(b"\n")
        if cut < 0:
          rest = data
          continue
        data, rest = data[:cut + 1], data[cut + 1:]
      if data.strip():
        yield pacsv.read_csv(pa.py_buffer(data.replace(multi, b"\t")), read_options=read,
                             parse_options=parse, convert_options=convert)
      if not buf:
        return


def _json_batches(src: Source, schema: pa.Schema, kinds: Dict[str, tuple],
                  optional: Sequence[str] = ()) -> Iterator[pa.RecordBatch]:
  """Streams JSON lines as arrow batches of ``schema``'s fields; other fields are ignored."""
  parse = pajson.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
  read = pajson.ReadOptions(block_size=BLOCK_BYTES)
  try:
    with _arrow_stream(src) as stream:
      for batch in pajson.open_json(stream, read_options=read, parse_options=parse):
        for field in schema.names:
          if field not in optional and batch.column(field).null_count:
            raise pa.ArrowInvalid(f"missing field {field}")
        yield batch
  except pa.ArrowInvalid as e:
    raise _diagnose_json(src, e, kinds, optional) from None


# -- columns -> numpy ------------------------------------------------------------------------------


def _to_seconds(arr, time_format: Optional[str] = None) -> np.ndarray:
  """An arrow column of numbers, timestamps, dates or date strings -> int64 unix seconds.

  Raises ``pa.ArrowInvalid`` on an unparsable value (callers turn it into a DataError with the line).
  """
  if isinstance(arr, pa.ChunkedArray):
    arr = arr.combine_chunks()
  t = arr.type
  if pa.types.is_integer(t):
    return arr.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
  if pa.types.is_floating(t):
    x = arr.to_numpy(zero_copy_only=False)
    if not np.all(np.isfinite(x)):
      raise pa.ArrowInvalid("non-finite timestamp")
    return np.floor(x).astype(np.int64)
  if pa.types.is_timestamp(t):
    per_s = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}[t.unit]
    return arr.cast(pa.int64()).to_numpy(zero_copy_only=False) // per_s
  if pa.types.is_date(t):
    return arr.cast(pa.date32()).cast(pa.int32()).to_numpy(zero_copy_only=False).astype(np.int64) * 86400
  if pa.types.is_string(t) or pa.types.is_large_string(t):
    if time_format is not None:
      return _to_seconds(pc.strptime(arr, format=time_format, unit="s"))
    no_z = pc.replace_substring_regex(arr, r"Z$", "")  # mixed "2019-01-02" and "...T10:00:00Z"
    for x, target in ((arr, pa.timestamp("s")), (arr, pa.timestamp("s", tz="UTC")),
                      (no_z, pa.timestamp("s")), (arr, pa.float64())):
      try:
        return _to_seconds(x.cast(target))
      except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    raise pa.ArrowInvalid("unparsable timestamp")
  raise pa.ArrowInvalid(f"timestamp column of type {t}")


class _Ids:
  """Accumulates one raw-id column chunk by chunk; ``finish`` builds the Vocab once."""

  def __init__(self, numeric_tokens: bool = False):
    self._parts = []  # ("i", int array) or ("s", local codes, arrow dictionary)
    self._numeric_tokens = numeric_tokens
    self.n = 0

  def add(self, arr) -> None:
    if isinstance(arr, pa.ChunkedArray):
      for chunk in arr.chunks:
        self.add(chunk)
      return
    self.n += len(arr)
    if pa.types.is_dictionary(arr.type):
      self._parts.append(("s", arr.indices.to_numpy(zero_copy_only=False), arr.dictionary.cast(pa.string())))
      return
    if pa.types.is_integer(arr.type):
      a = arr.to_numpy(zero_copy_only=False)
      fits = a.size == 0 or (a.min() >= _INT32.min and a.max() <= _INT32.max)
      self._parts.append(("i", a.astype(np.int32 if fits else np.int64, copy=False)))
      return
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
      arr = arr.cast(pa.string())
    enc = pc.dictionary_encode(arr)
    self._parts.append(("s", enc.indices.to_numpy(zero_copy_only=False), enc.dictionary.cast(pa.string())))

  def finish(self) -> tuple:
    """-> (Vocab, int32 codes); consumes the chunks."""
    parts, self._parts = self._parts, []
    if all(p[0] == "i" for p in parts):
      ids = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.int32)
      del parts
      return _encode_ints(ids)
    for k, p in enumerate(parts):
      if p[0] == "i":
        enc = pc.dictionary_encode(pa.array(p[1]).cast(pa.string()))
        parts[k] = ("s", enc.indices.to_numpy(zero_copy_only=False), enc.dictionary)
    dicts = pa.chunked_array([p[2] for p in parts], type=pa.string())
    uniq = pc.unique(dicts)
    uniq = uniq.take(pc.sort_indices(uniq))
    where = pc.index_in(dicts, value_set=uniq).to_numpy().astype(np.int32)  # one hash table for all
    starts = np.cumsum([0] + [len(p[2]) for p in parts])
    codes = np.concatenate([where[start + local] for start, (_, local, _) in zip(starts, parts)])
    if self._numeric_tokens and len(uniq) and pc.all(
        pc.match_substring_regex(uniq, r"^(0|-?[1-9][0-9]{0,17})$")).as_py():
      raw = uniq.cast(pa.int64()).to_numpy()
      order = np.argsort(raw, kind="stable")
      rank = np.empty_like(order, dtype=np.int32)
      rank[order] = np.arange(order.size, dtype=np.int32)
      return Vocab(raw=raw[order]), rank[codes]
    return Vocab(raw=_strings_to_numpy(uniq)), codes


def _strings_to_numpy(arr: pa.Array) -> np.ndarray:
  obj = arr.to_numpy(zero_copy_only=False)
  width = pc.max(pc.utf8_length(arr)).as_py() if len(arr) else 0
  return obj.astype(str) if width <= _MAX_FIXED_WIDTH else obj


def _encode_ints(ids: np.ndarray) -> tuple:
  """Integer raw ids -> (Vocab of sorted distinct ids, int32 codes); dense table when ids are compact."""
  if ids.size == 0:
    return Vocab(raw=np.zeros(0, np.int64)), np.zeros(0, np.int32)
  lo, hi = int(ids.min()), int(ids.max())
  span = hi - lo + 1
  if span <= min(4 * ids.size + (1 << 20), _INT32.max):
    ids -= ids.dtype.type(lo)
    present = np.zeros(span, bool)
    present[ids] = True
    table = np.cumsum(present, dtype=np.int32) - 1
    codes = table[ids]
    return Vocab(raw=np.flatnonzero(present).astype(np.int64) + lo), codes
  uniq, codes = np.unique(ids, return_inverse=True)
  return Vocab(raw=uniq.astype(np.int64)), codes.astype(np.int32)


class _Builder:
  """Collects compact per-chunk columns and builds the InteractionLog at the end."""

  def __init__(self, src: Source, numeric_tokens: bool = False):
    self.src = src
    self.user = _Ids(numeric_tokens)
    self.item = _Ids(numeric_tokens)
    self.ts: List[np.ndarray] = []
    self.rating: List[np.ndarray] = []

  def add(self, user, item, ts: Optional[np.ndarray] = None, rating=None) -> None:
    self.user.add(user)
    self.item.add(item)
    if ts is not None:
      self.ts.append(np.asarray(ts, np.int64))
    if rating is not None:
      if not isinstance(rating, np.ndarray):
        rating = rating.to_numpy(zero_copy_only=False)
      self.rating.append(rating.astype(np.float32, copy=False))

  def build(self, name: str, what: str = "") -> InteractionLog:
    n = self.user.n
    if n == 0:
      raise DataError(f"{self.src.name}: no interactions{what}")
    user_vocab, user = self.user.finish()
    item_vocab, item = self.item.finish()
    ts = _cat(self.ts) if self.ts else None
    rating = _cat(self.rating) if self.rating else None
    return InteractionLog.from_arrays(user, item, ts, rating, num_users=len(user_vocab),
                                      num_items=len(item_vocab), user_vocab=user_vocab,
                                      item_vocab=item_vocab, name=name)


def _cat(parts: List[np.ndarray]) -> np.ndarray:
  out = np.concatenate(parts)
  parts.clear()
  return out


def _col(batch, name):
  return batch.column(name)


# -- MovieLens ----------------------------------------------------------------------------------


_ML_TYPES = {"user": pa.int64(), "item": pa.int64(), "rating": pa.float32(), "timestamp": pa.int64()}


def _simple_delimited(src: Source, *, names, cols, types, name, **kw) -> InteractionLog:
  """Files whose columns map directly to (user, item, rating, timestamp)."""
  user, item, rating, ts = cols
  b = _Builder(src)
  include = [c for c in cols if c is not None]
  for batch in _csv_batches(src, names=names, include=include, types=types, required=include, **kw):
    b.add(_col(batch, user), _col(batch, item), _to_seconds(_col(batch, ts)),
          None if rating is None else _col(batch, rating))
  return b.build(name)


def load_movielens_udata(path, *, name: str = "ml-100k") -> InteractionLog:
  """MovieLens-100K ``u.data``: tab-separated ``user item rating timestamp``, no header."""
  names = ["user", "item", "rating", "timestamp"]
  return _simple_delimited(_source(path, "u.data"), names=names, cols=names, types=_ML_TYPES,
                           delimiter="\t", name=name)


def load_movielens_dat(path, *, name: str = "ml-1m") -> InteractionLog:
  """MovieLens-1M/10M ``ratings.dat``: ``UserID::MovieID::Rating::Timestamp``, no header."""
  names = ["user", "item", "rating", "timestamp"]
  return _simple_delimited(_source(path, "ratings.dat"), names=names, cols=names, types=_ML_TYPES,
                           multi=b"::", quoting=False, name=name)


def load_movielens_csv(path, *, name: str = "ml-25m") -> InteractionLog:
  """MovieLens-20M/25M ``ratings.csv``: header ``userId,movieId,rating,timestamp``."""
  cols = ["userId", "movieId", "rating", "timestamp"]
  types = dict(zip(cols, _ML_TYPES.values()))
  return _simple_delimited(_source(path, "ratings.csv"), names=None, cols=cols, types=types, name=name)


def load_movietweetings(path, *, name: str = "movietweetings") -> InteractionLog:
  """MovieTweetings ``ratings.dat``: ``user_id::movie_id::rating::rating_timestamp`` (ratings 0-10)."""
  names = ["user", "item", "rating", "timestamp"]
  return _simple_delimited(_source(path, "ratings.dat"), names=names, cols=names, types=_ML_TYPES,
                           multi=b"::", quoting=False, name=name)


# -- Amazon, Yelp, Adressa (JSON lines) -----------------------------------------------------------


def load_amazon_csv(path, *, name: str = "amazon") -> InteractionLog:
  """Amazon ratings-only CSV: ``user,item,rating,timestamp``, no header; ids are strings."""
  names = ["user", "item", "rating", "timestamp"]
  types = {"user": _DICT, "item": _DICT, "rating": pa.float32(), "timestamp": pa.int64()}
  return _simple_delimited(_source(path), names=names, cols=names, types=types, name=name)


def load_amazon_json(path, *, name: str = "amazon") -> InteractionLog:
  """Amazon 5-core JSON lines (optionally .gz): ``reviewerID``, ``asin``, ``overall``, ``unixReviewTime``."""
  src = _source(path)
  schema = pa.schema([("reviewerID", pa.string()), ("asin", pa.string()), ("overall", pa.float32()),
                      ("unixReviewTime", pa.int64())])
  kinds = {"reviewerID": _J_STR, "asin": _J_STR, "overall": _J_NUM, "unixReviewTime": _J_INT}
  b = _Builder(src)
  for batch in _json_batches(src, schema, kinds):
    b.add(batch.column("reviewerID"), batch.column("asin"), _to_seconds(batch.column("unixReviewTime")),
          batch.column("overall"))
  return b.build(name)


def load_yelp(path, *, name: str = "yelp") -> InteractionLog:
  """Yelp ``review.json`` lines: ``user_id``, ``business_id``, ``stars``, ``date`` ("YYYY-MM-DD HH:MM:SS")."""
  src = _source(path, "yelp_academic_dataset_review.json")
  schema = pa.schema([("user_id", pa.string()), ("business_id", pa.string()), ("stars", pa.float32()),
                      ("date", pa.string())])
  kinds = {"user_id": _J_STR, "business_id": _J_STR, "stars": _J_NUM, "date": _j_time(YELP_TIME_FORMAT)}
  b = _Builder(src)
  try:
    for batch in _json_batches(src, schema, kinds):
      b.add(batch.column("user_id"), batch.column("business_id"),
            _to_seconds(batch.column("date"), YELP_TIME_FORMAT), batch.column("stars"))
  except pa.ArrowInvalid as e:
    raise _diagnose_json(src, e, kinds) from None
  return b.build(name)


def load_adressa(path, *, name: str = "adressa") -> InteractionLog:
  """Adressa event JSON lines: ``userId``, ``time`` (unix s), ``id`` (article).

  ``path`` may be one file or a directory of daily files (read in sorted order). Events without
  an ``id`` (page views of non-article pages) are skipped; their count is logged at INFO level.
  """
  p = os.fspath(path)
  files = ([os.path.join(p, f) for f in sorted(os.listdir(p)) if os.path.isfile(os.path.join(p, f))]
           if os.path.isdir(p) else [p])
  schema = pa.schema([("userId", pa.string()), ("time", pa.int64()), ("id", pa.string())])
  kinds = {"userId": _J_STR, "time": _J_INT, "id": _J_STR}
  srcs = [_source(f) for f in files]
  b = _Builder(srcs[0] if srcs else Source(p, None))
  skipped = 0
  for src in srcs:
    for batch in _json_batches(src, schema, kinds, optional=("id",)):
      skipped += batch.column("id").null_count
      batch = batch.filter(batch.column("id").is_valid())
      b.add(batch.column("userId"), batch.column("id"), _to_seconds(batch.column("time")))
  _LOG.info("%s: skipped %d events without an article id", p, skipped)
  b.src = Source(p, None)
  return b.build(name, f" (skipped {skipped} events without 'id')")


# -- Taobao ---------------------------------------------------------------------------------------


def load_taobao(path, *, behaviors: Optional[Sequence[str]] = None, name: str = "taobao") -> InteractionLog:
  """Taobao ``UserBehavior.csv``: ``user_id,item_id,category_id,behavior_type,timestamp``, no header.

  Args:
    behaviors: the behavior types to keep, a subset of ``pv, buy, cart, fav`` (default: all).

  The item's category becomes ``item_features`` of shape ``[num_items, 1]`` float32 holding a
  contiguous category index (categories sorted by raw id; an item listed with several categories
  keeps the one of its first row). A one-hot matrix would be too large (~9.4K categories).
  """
  keep = tuple(TAOBAO_BEHAVIORS if behaviors is None else behaviors)
  bad = [x for x in keep if x not in TAOBAO_BEHAVIORS]
  if bad or not keep:
    raise DataError(f"taobao: behaviors {list(keep)}: expected a non-empty subset of "
                    f"{list(TAOBAO_BEHAVIORS)}")
  src = _source(path, "UserBehavior.csv")
  names = ["user_id", "item_id", "category_id", "behavior_type", "timestamp"]
  types = {"user_id": pa.int64(), "item_id": pa.int64(), "category_id": pa.int64(),
           "behavior_type": pa.string(), "timestamp": pa.int64()}
  b = _Builder(src)
  first_item, first_cat = [], []
  value_set = pa.array(list(keep))
  for batch in _csv_batches(src, names=names, include=names, types=types, required=names):
    batch = batch.filter(pc.is_in(batch.column("behavior_type"), value_set=value_set))
    if not len(batch):
      continue
    items = batch.column("item_id").to_numpy()
    uniq, idx = np.unique(items, return_index=True)
    first_item.append(uniq)
    first_cat.append(batch.column("category_id").to_numpy()[idx])
    b.add(batch.column("user_id"), batch.column("item_id"), _to_seconds(batch.column("timestamp")))
  log = b.build(name, f" with behavior in {list(keep)}")
  items, idx = np.unique(np.concatenate(first_item), return_index=True)
  cats = np.concatenate(first_cat)[idx]
  _, cat_idx = Vocab.build(cats)
  feats = np.zeros((log.num_items, 1), np.float32)
  feats[log.item_vocab.encode(items, "item_id"), 0] = cat_idx
  return InteractionLog.from_arrays(log.user, log.item, log.timestamp, None, num_users=log.num_users,
                                    num_items=log.num_items, item_features=feats,
                                    user_vocab=log.user_vocab, item_vocab=log.item_vocab, name=name)


# -- Last.fm-1K -----------------------------------------------------------------------------------


def load_lastfm_1k(path, *, item: str = "track", skip_bad_lines: bool = False,
                   name: str = "lastfm-1k") -> InteractionLog:
  """Last.fm-1K ``userid-timestamp-artid-artname-traid-traname.tsv`` (tab-separated, no header).

  Args:
    item: ``"track"`` (track MusicBrainz id, or ``artist<TAB>track`` name when the id is empty)
      or ``"artist"`` (artist id, or the artist name when empty).
    skip_bad_lines: skip lines without 6 tab-separated fields (count logged at INFO level)
      instead of raising a DataError naming the first one.
  """
  if item not in ("track", "artist"):
    raise DataError(f"lastfm-1k: item={item!r}, expected 'track' or 'artist'")
  src = _source(path, "userid-timestamp-artid-artname-traid-traname.tsv")
  names = ["userid", "timestamp", "artid", "artname", "traid", "traname"]
  types = {n: pa.string() for n in names}
  types["timestamp"] = pa.timestamp("s", tz="UTC")
  include = ["userid", "timestamp", "artid", "artname"] + (["traid", "traname"] if item == "track" else [])
  b = _Builder(src)
  skipped = [] if skip_bad_lines else None
  for batch in _csv_batches(src, names=names, include=include, types=types, delimiter="\t",
                            quoting=False, required=["userid", "timestamp"], skipped=skipped):
    art_name = pc.fill_null(batch.column("artname"), "")
    if item == "track":
      ident = batch.column("traid")
      fallback = pc.binary_join_element_wise(art_name, pc.fill_null(batch.column("traname"), ""), "\t")
    else:
      ident, fallback = batch.column("artid"), art_name
    empty = pc.fill_null(pc.equal(pc.utf8_length(ident), 0), True)
    b.add(batch.column("userid"), pc.if_else(empty, fallback, ident), _to_seconds(batch.column("timestamp")))
  if skipped:
    _LOG.info("%s: skipped %d lines without 6 fields (first: line %s)", src.name, len(skipped), skipped[0])
  return b.build(name)


# -- MIND -----------------------------------------------------------------------------------------


def load_mind(path, *, history: bool = False, name: str = "mind") -> InteractionLog:
  """MIND ``behaviors.tsv``: ``impression_id, user_id, time, history, impressions`` (no header).

  Clicked impressions (``N123-1``) become interactions at the impression time (``11/15/2019
  8:55:22 AM``, read as UTC). With ``history=True`` the history column of each user's first
  impression is added too, in order, at times ``t0 - L, ..., t0 - 1`` just before that first
  impression time ``t0`` (``L`` = history length).
  """
  src = _source(path, "behaviors.tsv")
  names = ["impression_id", "user_id", "time", "history", "impressions"]
  types = {"impression_id": pa.int64(), "user_id": pa.string(), "time": pa.string(),
           "history": pa.string(), "impressions": pa.string()}
  time_check = (_time_check(MIND_TIME_FORMAT), f"a time like '11/15/2019 8:55:22 AM' ({MIND_TIME_FORMAT})")
  tok_ok = lambda v: all(t.endswith(("-0", "-1")) and len(t) > 2 for t in v.split())
  checks = {"time": time_check, "impressions": (tok_ok, "space-separated 'NEWSID-0|1' tokens")}
  include = names[1:] if history else ["user_id", "time", "impressions"]
  batches = _csv_batches(src, names=names, include=include, types=types, delimiter="\t", quoting=False,
                         checks=checks, required=["user_id"])
  b = _Builder(src)
  firsts = []
  try:
    for batch in batches:
      t = _to_seconds(batch.column("time"), MIND_TIME_FORMAT)
      lists = pc.split_pattern(pc.fill_null(batch.column("impressions"), ""), " ")
      tokens = pc.list_flatten(lists)
      parent = pc.list_parent_indices(lists).to_numpy()
      nonempty = pc.greater(pc.utf8_length(tokens), 0)
      if not pc.all(pc.or_(pc.invert(nonempty), pc.match_substring_regex(tokens, r".-[01]$"))).as_py():
        raise pa.ArrowInvalid("bad impression token")
      clicked = pc.ends_with(tokens, "-1")
      rows = parent[clicked.to_numpy(zero_copy_only=False)]
      b.add(batch.column("user_id").take(rows), pc.utf8_slice_codeunits(tokens.filter(clicked), 0, -2),
            t[rows])
      if history:
        firsts.append(_first_per_user(batch.column("user_id"), t, batch.column("history")))
  except pa.ArrowInvalid as e:
    raise _diagnose_lines(src, e, split=lambda line: line.split("\t"), names=names, checks=checks,
                          header=False) from None
  if history and firsts:
    users = pa.concat_arrays([f[0] for f in firsts])
    users, t0, hist = _first_per_user(users, np.concatenate([f[1] for f in firsts]),
                                      pa.concat_arrays([f[2] for f in firsts]))
    lists = pc.split_pattern(pc.fill_null(hist, ""), " ")
    tokens = pc.list_flatten(lists)
    parent = pc.list_parent_indices(lists).to_numpy()
    keep = pc.greater(pc.utf8_length(tokens), 0).to_numpy(zero_copy_only=False)
    lengths = pc.list_value_length(lists).to_numpy(zero_copy_only=False).astype(np.int64)
    offsets = lists.offsets.to_numpy()[:-1].astype(np.int64)
    pos = np.arange(len(tokens), dtype=np.int64) - offsets[parent]
    ts = t0[parent] - lengths[parent] + pos
    b.add(users.take(parent[keep]), tokens.filter(pa.array(keep)), ts[keep])
  return b.build(name, " (no clicked impressions)")


def _first_per_user(users, t: np.ndarray, hist) -> tuple:
  """Rows of each user's earliest time (first in file order on ties): (users, t, history)."""
  if isinstance(users, pa.ChunkedArray):
    users = users.combine_chunks()
  if isinstance(hist, pa.ChunkedArray):
    hist = hist.combine_chunks()
  codes = pc.dictionary_encode(users).indices.to_numpy(zero_copy_only=False)
  order = np.lexsort((t, codes))
  sc = codes[order]
  first = order[np.r_[True, sc[1:] != sc[:-1]]] if sc.size else order
  return users.take(first), t[first], hist.take(first)


# -- RecBole atomic files ------------------------------------------------------------------------


def _recbole_header(src: Source) -> tuple:
  with src.open() as f:
    first = f.readline().decode("utf-8", "replace").lstrip("\ufeff").rstrip("\r\n")
  if not first:
    raise DataError(f"{src.name}: empty file, expected a RecBole header like 'user_id:token\\titem_id:token'")
  names, kinds = [], []
  for k, field in enumerate(first.split("\t")):
    fname, sep, kind = field.rpartition(":")
    if not sep or kind not in ("token", "token_seq", "float", "float_seq"):
      raise DataError(f"{src.name}, line 1, header field {k + 1} {field!r}: expected 'name:type' with type "
                      "token, token_seq, float or float_seq")
    names.append(fname)
    kinds.append(kind)
  return names, kinds


def _recbole_types(names, kinds):
  return {n: (pa.float64() if k == "float" else pa.string()) for n, k in zip(names, kinds)}


def load_recbole(path, *, item_path=None, user_field: str = "user_id", item_field: str = "item_id",
                 rating_field: Optional[str] = "rating", time_field: Optional[str] = "timestamp",
                 name: Optional[str] = None) -> InteractionLog:
  """RecBole atomic ``.inter`` file (typed header ``user_id:token\\titem_id:token\\t...``).

  Tokens that are all canonical integers get an integer vocabulary (so ``ml-100k.inter`` encodes
  like ``u.data``). ``rating_field``/``time_field`` absent from the header are simply not read
  (timestamps are then the row order).

  Args:
    item_path: optional ``.item`` file; its ``:float`` columns (value) and ``:token`` columns
      (contiguous index of the sorted tokens), in header order, become ``item_features``
      ``[num_items, f]`` aligned with the item vocabulary; ``*_seq`` columns are skipped; items
      absent from the ``.item`` file get NaN, rows of items absent from the log are dropped.
  """
  src = _source(path)
  names, kinds = _recbole_header(src)
  for field in (user_field, item_field):
    if field not in names:
      raise DataError(f"{src.name}: missing field {field!r} in the RecBole header; fields are {names}")
  for field in (rating_field, time_field):
    if field is not None and field in names and kinds[names.index(field)] != "float":
      raise DataError(f"{src.name}: field {field!r} has type {kinds[names.index(field)]}, expected float")
  rating = rating_field if rating_field in names else None
  ts = time_field if time_field in names else None
  include = [c for c in (user_field, item_field, rating, ts) if c is not None]
  b = _Builder(src, numeric_tokens=True)
  types = dict(_recbole_types(names, kinds), **{user_field: _DICT, item_field: _DICT})
  for batch in _csv_batches(src, names=names, include=include, types=types,
                            delimiter="\t", quoting=False, required=include, header_rows=1):
    b.add(batch.column(user_field), batch.column(item_field),
          None if ts is None else _to_seconds(batch.column(ts)),
          None if rating is None else batch.column(rating))
  if name is None:
    name = os.path.splitext(os.path.basename(src.name))[0]
  log = b.build(name)
  if item_path is None:
    return log
  feats = _recbole_item_features(_source(item_path), log.item_vocab, item_field)
  return InteractionLog.from_arrays(log.user, log.item, log.timestamp, log.rating, num_users=log.num_users,
                                    num_items=log.num_items, item_features=feats,
                                    user_vocab=log.user_vocab, item_vocab=log.item_vocab, name=name)


def _recbole_item_features(src: Source, vocab: Vocab, item_field: str) -> np.ndarray:
  names, kinds = _recbole_header(src)
  if item_field not in names:
    raise DataError(f"{src.name}: missing field {item_field!r} in the RecBole header; fields are {names}")
  feat_cols = [n for n, k in zip(names, kinds) if n != item_field and k in ("float", "token")]
  tables = list(_csv_batches(src, names=names, include=[item_field] + feat_cols,
                             types=_recbole_types(names, kinds), delimiter="\t", quoting=False,
                             required=[item_field], header_rows=1))
  table = pa.Table.from_batches(tables) if tables else None
  out = np.full((len(vocab), len(feat_cols)), np.nan, np.float32)
  if table is None or not len(table):
    return out
  raw = table.column(item_field).combine_chunks()
  if vocab.raw.dtype.kind in "iu":
    canon = pc.match_substring_regex(raw, r"^(0|-?[1-9][0-9]{0,17})$").to_numpy(zero_copy_only=False)
    keys = np.zeros(len(raw), np.int64)
    keys[canon] = raw.filter(canon).cast(pa.int64()).to_numpy()
  else:
    canon = np.ones(len(raw), bool)
    keys = raw.to_numpy(zero_copy_only=False).astype(vocab.raw.dtype)
  pos = np.clip(np.searchsorted(vocab.raw, keys), 0, max(len(vocab) - 1, 0))
  found = canon & (vocab.raw[pos] == keys) if len(vocab) else np.zeros(len(raw), bool)
  for j, col in enumerate(feat_cols):
    c = table.column(col).combine_chunks()
    if pa.types.is_floating(c.type):
      vals = c.to_numpy(zero_copy_only=False).astype(np.float32)
    else:
      _, vals = Vocab.build(pc.fill_null(c, "").to_numpy(zero_copy_only=False).astype(object))
    out[pos[found], j] = vals[found]
  return out


# -- generic CSV / Parquet ------------------------------------------------------------------------


AUTO = "auto"  # ``timestamp=AUTO``: the column named ``timestamp`` when the file has one, else row order
TIME_COLUMN = "timestamp"


def _auto_time(timestamp: Optional[str], names: Sequence[str]) -> Optional[str]:
  if timestamp != AUTO:
    return timestamp
  return TIME_COLUMN if TIME_COLUMN in names else None


def generic_column_map(format: str, path, *, user: str = "user", item: str = "item",  # pylint: disable=redefined-builtin
                       timestamp: Optional[str] = AUTO, rating: Optional[str] = None,
                       delimiter: str = ",", **unused) -> Dict[str, Optional[str]]:
  """Which file column :func:`load_csv` / :func:`load_parquet` read as what, from the header only.

  Returns:
    ``{"user": COLUMN, "item": COLUMN, "timestamp": COLUMN or None, "rating": COLUMN or None}``;
    a None timestamp means the row order is the time.
  """
  del unused
  src = _source(path)
  if format == "parquet":
    names = pq.ParquetFile(src.path).schema_arrow.names
  else:
    with src.open() as f:
      first = f.readline().decode("utf-8", "replace").lstrip("\ufeff").rstrip("\r\n")
    names = next(csv.reader([first], delimiter=delimiter)) if first else []
  return {"user": user, "item": item, "timestamp": _auto_time(timestamp, names), "rating": rating}


def load_csv(path, *, user: str = "user", item: str = "item", timestamp: Optional[str] = AUTO,
             rating: Optional[str] = None, delimiter: str = ",", time_format: Optional[str] = None,
             id_type: str = "auto", name: Optional[str] = None) -> InteractionLog:
  """A delimited file with a header; columns picked by name.

  Args:
    timestamp: the time column (numbers = unix seconds, or ISO date/time strings, or strings in
      ``time_format`` for ``strptime``); ``"auto"`` (default): the column named ``timestamp`` if the
      header has one, else none; None -> the row order is the time.
    id_type: ``"auto"`` infers integer or string ids (falling back to strings if a later chunk
      has a non-integer id), ``"str"`` always reads them as strings (keeps leading zeros).
  """
  if id_type not in ("auto", "str"):
    raise DataError(f"csv: id_type={id_type!r}, expected 'auto' or 'str'")
  src = _source(path)
  if timestamp == AUTO:
    timestamp = generic_column_map("csv", src, delimiter=delimiter)["timestamp"]
  cols = [user, item, rating, timestamp]
  include = [c for c in cols if c is not None]
  name = name or os.path.splitext(os.path.basename(src.name))[0]
  for ids_as_str in ((False, True) if id_type == "auto" else (True,)):
    types = {user: _DICT, item: _DICT} if ids_as_str else {}
    if rating is not None:
      types[rating] = pa.float32()
    if timestamp is not None and time_format is not None:
      types[timestamp] = pa.string()
    checks = {timestamp: (_time_check(time_format), "a number or a date/time"
                          + (f" like {time_format!r}" if time_format else ""))} if timestamp else {}
    try:
      b = _Builder(src)
      for batch in _csv_batches(src, names=None, include=include, types=types, delimiter=delimiter,
                                checks=checks, required=include):
        ts = None
        if timestamp is not None:
          try:
            ts = _to_seconds(batch.column(timestamp), time_format)
          except pa.ArrowInvalid as e:
            raise _diagnose_lines(src, e, split=lambda line: next(csv.reader([line], delimiter=delimiter)),
                                  names=_read_header(src, delimiter, include), checks=checks,
                                  header=True) from None
        b.add(batch.column(user), batch.column(item), ts, None if rating is None else batch.column(rating))
      return b.build(name)
    except DataError as e:
      if ids_as_str or "cannot read" not in str(e):
        raise
  raise AssertionError("unreachable")


def load_parquet(path, *, user: str = "user", item: str = "item", timestamp: Optional[str] = AUTO,
                 rating: Optional[str] = None, time_format: Optional[str] = None,
                 name: Optional[str] = None, batch_size: int = 1 << 20) -> InteractionLog:
  """A Parquet file, streamed by row batches; columns picked by name (timestamps as in load_csv)."""
  src = _source(path)
  pf = pq.ParquetFile(src.path)
  existing = pf.schema_arrow.names
  timestamp = _auto_time(timestamp, existing)
  include = [c for c in (user, item, rating, timestamp) if c is not None]
  missing = [c for c in include if c not in existing]
  if missing:
    raise DataError(f"{src.name}: missing column(s) {missing}; the file has columns {existing}")
  b = _Builder(src)
  row = 0
  for batch in pf.iter_batches(batch_size=batch_size, columns=include):
    for col in include:
      if batch.column(col).null_count:
        bad = row + int(np.flatnonzero(~batch.column(col).is_valid().to_numpy(zero_copy_only=False))[0])
        raise DataError(f"{src.name}, row {bad}, column '{col}': null value, expected a value")
    ts = None
    if timestamp is not None:
      try:
        ts = _to_seconds(batch.column(timestamp), time_format)
      except pa.ArrowInvalid:
        raise DataError(_bad_time_row(src, batch.column(timestamp), time_format, row, timestamp)) from None
    b.add(batch.column(user), batch.column(item), ts, None if rating is None else batch.column(rating))
    row += len(batch)
  return b.build(name or os.path.splitext(os.path.basename(src.name))[0])


def _bad_time_row(src, col, time_format, row0, field) -> str:
  check = _time_check(time_format)
  for k, v in enumerate(col.to_pylist()):
    if not check(str(v)):
      return f"{src.name}, row {row0 + k}, column '{field}': expected a number or a date/time, got {v!r}"
  return f"{src.name}, column '{field}': unparsable timestamps"


# -- dispatch ------------------------------------------------------------------------------------


FORMATS: Dict[str, Callable[..., InteractionLog]] = {
    "ml-100k": load_movielens_udata,
    "ml-1m": load_movielens_dat,
    "ml-10m": load_movielens_dat,
    "ml-20m": load_movielens_csv,
    "ml-25m": load_movielens_csv,
    "amazon-csv": load_amazon_csv,
    "amazon-json": load_amazon_json,
    "yelp": load_yelp,
    "taobao": load_taobao,
    "lastfm-1k": load_lastfm_1k,
    "movietweetings": load_movietweetings,
    "adressa": load_adressa,
    "mind": load_mind,
    "recbole": load_recbole,
    "csv": load_csv,
    "parquet": load_parquet,
}


def load(format: str, path, **options) -> InteractionLog:  # pylint: disable=redefined-builtin
  """Reads ``path`` with the reader registered under ``format`` in :data:`FORMATS`."""
  if format not in FORMATS:
    raise DataError(f"unknown dataset format {format!r}; known formats: {sorted(FORMATS)}")
  fn = FORMATS[format]
  params = [p for p in inspect.signature(fn).parameters if p != "path"]
  unknown = [k for k in options if k not in params]
  if unknown:
    raise DataError(f"format {format!r}: unknown option(s) {unknown}; it takes {params}")
  if "name" in params and "name" not in options and format.startswith("ml-"):
    options["name"] = format
  return fn(path, **options)
