"""Dataset specs: options in the spec's query, the column map, the timestamp column read when present."""

import numpy as np
import pytest

from jaxrec.data import datasets
from jaxrec.data.log import DataError


def _write(tmp_path, name, text):
  path = tmp_path / name
  path.write_text(text)
  return str(path)


def test_csv_spec_reads_a_timestamp_column_by_default(tmp_path):
  path = _write(tmp_path, "r.csv", "user,item,timestamp\n1,2,300\n1,3,100\n2,2,200\n")
  log = datasets.load_dataset(f"csv:{path}")
  np.testing.assert_array_equal(log.timestamp, [300, 100, 200])
  assert datasets.describe(f"csv:{path}")["column_map"] == {
      "user": "user", "item": "item", "timestamp": "timestamp", "rating": None}
  rows = datasets.load_dataset(f"csv:{path}?timestamp=")  # explicitly: row order
  np.testing.assert_array_equal(rows.timestamp, [0, 1, 2])
  assert "row order" in datasets.column_summary(datasets.describe(f"csv:{path}?timestamp="))


def test_csv_spec_maps_columns_and_options(tmp_path):
  path = _write(tmp_path, "m.tsv", "user_id\tmovie\tts\tstars\nu1\tm1\t5\t4\nu2\tm1\t7\t3\n")
  spec = f"csv:{path}?user=user_id&item=movie&timestamp=ts&rating=stars&delimiter=%09"
  log = datasets.load_dataset(spec)
  np.testing.assert_array_equal(log.timestamp, [5, 7])
  np.testing.assert_array_equal(log.rating, [4, 3])
  desc = datasets.describe(spec)
  assert desc["path"] == path and desc["options"]["delimiter"] == "\t"
  assert desc["column_map"] == {"user": "user_id", "item": "movie", "timestamp": "ts", "rating": "stars"}
  assert datasets.column_summary(desc) == (
      "columns read: user <- 'user_id', item <- 'movie', timestamp <- 'ts', rating <- 'stars'")
  assert datasets.short_name(spec) == "csv-m"


def test_bad_timestamp_in_a_default_timestamp_column_names_the_line(tmp_path):
  path = _write(tmp_path, "r.csv", "user,item,timestamp\n1,2,300\n1,3,soon\n")
  with pytest.raises(DataError, match=r"r.csv, line 3, column 'timestamp'.*'soon'"):
    datasets.load_dataset(f"csv:{path}")


@pytest.mark.parametrize("query, message", [
    ("?colour=red", r"has no option 'colour'"),
    ("?user", r"options must read"),
    ("?user=a&user=b", r"option 'user' given twice"),
    ("?user=uid", r"missing column\(s\) \['uid'\].*\?user=COLUMN"),
])
def test_bad_spec_options(tmp_path, query, message):
  path = _write(tmp_path, "r.csv", "user,item\n1,2\n")
  with pytest.raises(DataError, match=message):
    datasets.load_dataset(f"csv:{path}{query}")


def test_typed_options_of_other_formats(tmp_path):
  spec = datasets.parse_spec("taobao:/x/UserBehavior.csv?behaviors=buy,cart")
  assert spec.options == {"behaviors": ["buy", "cart"]}
  assert datasets.parse_spec("lastfm-1k:/x.tsv?skip_bad_lines=true").options == {"skip_bad_lines": True}
  assert datasets.parse_spec("parquet:/x.parquet?batch_size=8").options == {"batch_size": 8}
  with pytest.raises(DataError, match="expected an integer"):
    datasets.parse_spec("parquet:/x.parquet?batch_size=many")
