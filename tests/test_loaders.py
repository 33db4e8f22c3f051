"""Tests for jaxrec.data.loaders: each public format read from a fixture in its exact real layout.

References are computed independently: fixtures are built from Python tuples and the expected log
is those tuples, in file order, decoded back through the vocabularies (which must be sorted).
"""

import calendar
import gzip
import json
import time

import hypothesis
import hypothesis.strategies as st
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jaxrec.data import loaders
from jaxrec.data.log import DataError


def _utc(s, fmt="%Y-%m-%d %H:%M:%S"):
  return calendar.timegm(time.strptime(s, fmt))


def _write(tmp_path, fname, text, mode="w"):
  p = tmp_path / fname
  if fname.endswith(".gz"):
    with gzip.open(p, "wt") as f:
      f.write(text)
  else:
    p.write_text(text)
  return str(p)


def _check(log, users, items, ts=None, ratings=None, name=None):
  """The log holds exactly these raw rows in this order, with sorted contiguous vocabularies."""
  assert len(log) == len(users)
  np.testing.assert_array_equal(log.user_vocab.decode(log.user).tolist(), users)
  np.testing.assert_array_equal(log.item_vocab.decode(log.item).tolist(), items)
  assert log.num_users == len(set(users)) and log.num_items == len(set(items))
  assert log.user_vocab.raw.tolist() == sorted(set(users))
  assert log.item_vocab.raw.tolist() == sorted(set(items))
  assert log.user.dtype == np.int32 and log.item.dtype == np.int32 and log.timestamp.dtype == np.int64
  if ts is not None:
    np.testing.assert_array_equal(log.timestamp, np.asarray(ts, np.int64))
  if ratings is None:
    assert log.rating is None
  else:
    assert log.rating.dtype == np.float32
    np.testing.assert_allclose(log.rating, ratings)
  if name is not None:
    assert log.name == name


ML_ROWS = [(196, 242, 3.0, 881250949), (186, 302, 3.0, 891717742), (22, 377, 1.0, 878887116),
           (196, 377, 4.5, 881251000), (1000000, 5, 2.0, 881251001)]


def _cols(rows):
  return [list(c) for c in zip(*rows)]


# -- MovieLens and MovieTweetings ------------------------------------------------------------------


def test_ml100k_udata(tmp_path):
  path = _write(tmp_path, "u.data", "".join(f"{u}\t{i}\t{int(r)}\t{t}\n" for u, i, r, t in ML_ROWS))
  u, i, r, t = _cols(ML_ROWS)
  _check(loaders.load_movielens_udata(path), u, i, t, np.floor(r), name="ml-100k")
  # a directory resolves to its u.data; the dispatcher gives the same log.
  _check(loaders.load("ml-100k", str(tmp_path)), u, i, t, np.floor(r), name="ml-100k")


def test_ml1m_dat_and_movietweetings(tmp_path):
  path = _write(tmp_path, "ratings.dat", "".join(f"{u}::{i}::{r:g}::{t}\n" for u, i, r, t in ML_ROWS))
  u, i, r, t = _cols(ML_ROWS)
  _check(loaders.load("ml-10m", path), u, i, t, r, name="ml-10m")
  mt = _write(tmp_path, "mt.dat", "1::0110912::9::1375657563\n2::0111161::10::1375657564\n1::0111161::0::9\n")
  _check(loaders.load_movietweetings(mt), [1, 2, 1], [110912, 111161, 111161], [1375657563, 1375657564, 9],
         [9, 10, 0], name="movietweetings")


def test_ml25m_csv(tmp_path):
  text = "userId,movieId,rating,timestamp\n" + "".join(f"{u},{i},{r},{t}\n" for u, i, r, t in ML_ROWS)
  path = _write(tmp_path, "ratings.csv", text)
  u, i, r, t = _cols(ML_ROWS)
  _check(loaders.load("ml-25m", path), u, i, t, r, name="ml-25m")


@hypothesis.settings(max_examples=15, deadline=None)
@hypothesis.given(rows=st.lists(st.tuples(st.integers(0, 50), st.integers(-3, 10**9), st.sampled_from(
    [0.5, 1.0, 4.5]), st.integers(0, 2**40)), min_size=1, max_size=60), block=st.integers(64, 400))
def test_streaming_chunks_match_reference(tmp_path_factory, rows, block):
  """Tiny blocks force many chunks: the ``::`` byte chunker and the per-chunk vocabularies agree."""
  tmp = tmp_path_factory.mktemp("chunks")
  dat = _write(tmp, "ratings.dat", "".join(f"{u}::{i}::{r}::{t}\n" for u, i, r, t in rows))
  csv_ = _write(tmp, "a.csv", "".join(f"u{u},i{i},{r},{t}\n" for u, i, r, t in rows))
  u, i, r, t = _cols(rows)
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(loaders, "BLOCK_BYTES", block)
    _check(loaders.load_movielens_dat(dat), u, i, t, r)
    _check(loaders.load_amazon_csv(csv_), [f"u{x}" for x in u], [f"i{x}" for x in i], t, r)


# -- Amazon, Yelp, Adressa ------------------------------------------------------------------------


def test_amazon_csv_keeps_string_ids(tmp_path):
  path = _write(tmp_path, "ratings_Books.csv",
                "A2SUAM1J3GNN3B,0000013714,5.0,1370131200\nAH2L9G3DQHHAJ,0000000116,4.0,1019865600\n"
                "A2SUAM1J3GNN3B,0000000116,1.0,1019865601\n")
  _check(loaders.load("amazon-csv", path), ["A2SUAM1J3GNN3B", "AH2L9G3DQHHAJ", "A2SUAM1J3GNN3B"],
         ["0000013714", "0000000116", "0000000116"], [1370131200, 1019865600, 1019865601], [5, 4, 1])


AMAZON_JSON = [
    {"reviewerID": "A2SUAM1J3GNN3B", "asin": "0000013714", "reviewerName": "J. McDonald",
     "helpful": [2, 3], "reviewText": "I bought this for my husband.", "overall": 5.0,
     "summary": "Heavenly Highway Hymns", "unixReviewTime": 1252800000, "reviewTime": "09 13, 2009"},
    {"reviewerID": "A3VBCX9CUKW1GE", "asin": "0000013714", "overall": 4.0, "summary": "x",
     "unixReviewTime": 1252800001, "reviewTime": "09 13, 2009", "style": {"Format:": " Hardcover"}},
]


def test_amazon_json_gz(tmp_path):
  path = _write(tmp_path, "reviews_Books_5.json.gz", "".join(json.dumps(r) + "\n" for r in AMAZON_JSON))
  _check(loaders.load("amazon-json", path), ["A2SUAM1J3GNN3B", "A3VBCX9CUKW1GE"], ["0000013714"] * 2,
         [1252800000, 1252800001], [5.0, 4.0])


YELP = [
    {"review_id": "xQY8N_XvtGbearJ5X4QryQ", "user_id": "OwjRMXRC0KyPrIlcjaXeFQ",
     "business_id": "-MhfebM0QIsKt87iDN-FNw", "stars": 2.0, "useful": 5, "funny": 0, "cool": 0,
     "text": "As someone who has worked with many museums...", "date": "2015-04-15 05:21:16"},
    {"review_id": "UmFMZ8PyXZTY2QcwzsfQYA", "user_id": "nIJD_7ZXHq-FX8byPMOkMQ",
     "business_id": "lbrU8StCq3yDfr-QMnGrmQ", "stars": 1, "useful": 1, "funny": 1, "cool": 0,
     "text": "I am actually horrified this place is still in business.", "date": "2013-12-07 03:16:52"},
]


def test_yelp(tmp_path):
  path = _write(tmp_path, "review.json", "".join(json.dumps(r) + "\n" for r in YELP))
  _check(loaders.load("yelp", path), [r["user_id"] for r in YELP], [r["business_id"] for r in YELP],
         [_utc(r["date"]) for r in YELP], [2.0, 1.0], name="yelp")


def test_yelp_bad_date_names_line(tmp_path):
  bad = dict(YELP[1], date="2013/12/07")
  path = _write(tmp_path, "review.json", json.dumps(YELP[0]) + "\n" + json.dumps(bad) + "\n")
  with pytest.raises(DataError, match=r"review.json, line 2, field 'date'.*2013/12/07"):
    loaders.load_yelp(path)


def test_adressa_skips_events_without_id(tmp_path):
  ev = {"eventId": 1, "city": "trondheim", "activeTime": 5, "url": "http://adressa.no/a",
        "referrerHostClass": "direct", "region": "sor-trondelag", "time": 1483225200,
        "userId": "cx:i68bn3gbf0ql786n:1hyr7mridb1el", "id": "ad9cbe6a0f7e2b8d2b7a3c8f1e6d5c4b3a2f1e0d"}
  events = [ev, dict(ev, time=1483225300, id=None), {k: v for k, v in ev.items() if k != "id"},
            dict(ev, userId="cx:other", time=1483225400, id="0123")]
  (tmp_path / "one_week").mkdir()
  _write(tmp_path, "one_week/20170101", "".join(json.dumps(e) + "\n" for e in events[:3]))
  _write(tmp_path, "one_week/20170102", json.dumps(events[3]) + "\n")
  log = loaders.load("adressa", str(tmp_path / "one_week"))
  _check(log, [ev["userId"], "cx:other"], [ev["id"], "0123"], [1483225200, 1483225400])
  with pytest.raises(DataError, match="no interactions.*skipped 2"):
    loaders.load_adressa(_write(tmp_path, "noid", "".join(json.dumps(e) + "\n" for e in events[1:3])))


# -- Taobao, Last.fm, MIND ------------------------------------------------------------------------


TAOBAO = [(1, 2268318, 2520377, "pv", 1511544070), (1, 2333346, 2520771, "buy", 1511561733),
          (100, 2268318, 2520377, "cart", 1511572885), (7, 4365585, 2520377, "fav", 1511596146),
          (7, 230380, 411153, "pv", 1511644942)]


def test_taobao_behaviors_and_category_feature(tmp_path):
  path = _write(tmp_path, "UserBehavior.csv", "".join(",".join(map(str, r)) + "\n" for r in TAOBAO))
  log = loaders.load("taobao", path)
  _check(log, [r[0] for r in TAOBAO], [r[1] for r in TAOBAO], [r[4] for r in TAOBAO])
  chex_cat = {2520377: 1, 2520771: 2, 411153: 0}  # contiguous index in sorted raw-category order
  assert log.item_features.shape == (log.num_items, 1)
  expected = [chex_cat[dict((r[1], r[2]) for r in TAOBAO)[raw]] for raw in log.item_vocab.raw]
  np.testing.assert_array_equal(log.item_features[:, 0], expected)
  sub = loaders.load_taobao(path, behaviors=["buy", "cart"])
  _check(sub, [1, 100], [2333346, 2268318], [1511561733, 1511572885])
  with pytest.raises(DataError, match=r"no interactions with behavior in \['buy'\]"):
    loaders.load_taobao(_write(tmp_path, "pv.csv", "1,2,3,pv,4\n"), behaviors=["buy"])
  with pytest.raises(DataError, match="subset of"):
    loaders.load_taobao(path, behaviors=["click"])


LASTFM = ("user_000001\t2009-05-04T23:08:57Z\tf1b1cf71-bd35-4e99-8624-24a6e15f133a\tDeep Dish\t\t"
          "Fuck Me Im Famous (Pacha Ibiza)-09-28-2007\n"
          "user_000001\t2009-05-04T13:54:10Z\ta7f7df4a-77d8-4f12-8acd-5c60c93f4de8\t坂本龍一\t"
          "7f2f9f66-4a1e-4c6c-9c58-1d2b3e4f5a6b\tComposition 0919 (Live_2009_4_15)\n"
          "user_000002\t2009-05-04T13:52:04Z\t\tSome \"Quoted\" Artist\t\tTrack\n")


def test_lastfm_track_and_artist(tmp_path):
  path = _write(tmp_path, "userid-timestamp-artid-artname-traid-traname.tsv", LASTFM)
  ts = [_utc(s, "%Y-%m-%dT%H:%M:%SZ") for s in
        ("2009-05-04T23:08:57Z", "2009-05-04T13:54:10Z", "2009-05-04T13:52:04Z")]
  users = ["user_000001", "user_000001", "user_000002"]
  _check(loaders.load("lastfm-1k", str(tmp_path)), users,
         ["Deep Dish\tFuck Me Im Famous (Pacha Ibiza)-09-28-2007", "7f2f9f66-4a1e-4c6c-9c58-1d2b3e4f5a6b",
          'Some "Quoted" Artist\tTrack'], ts)
  _check(loaders.load_lastfm_1k(path, item="artist"), users,
         ["f1b1cf71-bd35-4e99-8624-24a6e15f133a", "a7f7df4a-77d8-4f12-8acd-5c60c93f4de8",
          'Some "Quoted" Artist'], ts)
  bad = _write(tmp_path, "bad.tsv", LASTFM + "user_000003\t2009-05-04T13:52:04Z\tonly four\n")
  with pytest.raises(DataError, match=r"bad.tsv, line 4: expected 6 fields"):
    loaders.load_lastfm_1k(bad)
  _check(loaders.load_lastfm_1k(bad, item="artist", skip_bad_lines=True), users,
         ["f1b1cf71-bd35-4e99-8624-24a6e15f133a", "a7f7df4a-77d8-4f12-8acd-5c60c93f4de8",
          'Some "Quoted" Artist'], ts)


MIND = ("1\tU13740\t11/11/2019 9:05:58 AM\tN55189 N42782 N34694\tN55689-1 N35729-0\n"
        "2\tU91836\t11/12/2019 6:11:30 PM\tN31739 N6072\tN20678-0 N39317-0 N58114-1 N20495-0 N42977-1\n"
        "3\tU13740\t11/10/2019 8:00:00 AM\tN55189 N42782 N34694\tN1-0\n"
        "4\tU5\t11/13/2019 12:00:01 AM\t\tN7-1\n")


def test_mind_clicks_and_history(tmp_path):
  path = _write(tmp_path, "behaviors.tsv", MIND)
  fmt = "%m/%d/%Y %I:%M:%S %p"
  t1, t2, t3, t4 = (_utc(s, fmt) for s in ("11/11/2019 9:05:58 AM", "11/12/2019 6:11:30 PM",
                                           "11/10/2019 8:00:00 AM", "11/13/2019 12:00:01 AM"))
  assert t4 % 86400 == 1  # 12 AM is midnight
  users, items = ["U13740", "U91836", "U91836", "U5"], ["N55689", "N58114", "N42977", "N7"]
  ts = [t1, t2, t2, t4]
  _check(loaders.load("mind", path), users, items, ts)
  hist = loaders.load_mind(path, history=True)
  # U13740's first impression is line 3 (t3); U91836's is line 2 (t2); U5 has no history.
  _check(hist, users + ["U13740", "U13740", "U13740", "U91836", "U91836"],
         items + ["N55189", "N42782", "N34694", "N31739", "N6072"],
         ts + [t3 - 3, t3 - 2, t3 - 1, t2 - 2, t2 - 1])


def test_mind_bad_token_and_time(tmp_path):
  bad = _write(tmp_path, "b.tsv", MIND.replace("N20678-0", "N20678"))
  with pytest.raises(DataError, match=r"b.tsv, line 2, column 'impressions'.*N20678"):
    loaders.load_mind(bad)
  bad = _write(tmp_path, "c.tsv", MIND.replace("11/10/2019 8:00:00 AM", "2019-11-10"))
  with pytest.raises(DataError, match=r"c.tsv, line 3, column 'time'.*2019-11-10"):
    loaders.load_mind(bad)


# -- RecBole atomic files --------------------------------------------------------------------------


def test_recbole_inter_and_item(tmp_path):
  inter = _write(tmp_path, "ml-100k.inter", "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
                 + "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in ML_ROWS))
  item = _write(tmp_path, "ml-100k.item",
                "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\tprice:float\n"
                "242\tKolya\t1996\tComedy\t1.5\n302\tL.A. Confidential\t1997\tCrime Thriller\t2.5\n"
                "377\tHeavyweights\t1994\tChildren Comedy\t3.5\n9999\tNot rated\t1990\tDrama\t4.5\n")
  u, i, r, t = _cols(ML_ROWS)
  log = loaders.load("recbole", inter, item_path=item)
  _check(log, u, i, t, r, name="ml-100k")
  assert log.item_vocab.raw.dtype == np.int64  # canonical integer tokens encode like u.data
  # columns: release_year (index of sorted years among 1990,1994,1996,1997), price; item 5 absent -> NaN.
  expected = {5: [np.nan, np.nan], 242: [2, 1.5], 302: [3, 2.5], 377: [1, 3.5]}
  np.testing.assert_array_equal(log.item_features, [expected[x] for x in log.item_vocab.raw])


def test_recbole_string_tokens_and_renamed_fields(tmp_path):
  path = _write(tmp_path, "yelp.inter", "user_id:token\tbusiness_id:token\tstars:float\tdate:float\n"
                "u1\t007\t4\t1.5e9\nu2\t7\t3\t1500000001\n")
  log = loaders.load_recbole(path, item_field="business_id", rating_field="stars", time_field="date")
  _check(log, ["u1", "u2"], ["007", "7"], [1500000000, 1500000001], [4, 3])
  nots = loaders.load_recbole(path, item_field="business_id")  # no rating/timestamp fields
  _check(nots, ["u1", "u2"], ["007", "7"], [0, 1], None)
  with pytest.raises(DataError, match=r"missing field 'item_id'.*'business_id'"):
    loaders.load_recbole(path)
  with pytest.raises(DataError, match=r"line 1, header field 2"):
    loaders.load_recbole(_write(tmp_path, "bad.inter", "user_id:token\titem_id\n1\t2\n"))


# -- generic CSV / Parquet -------------------------------------------------------------------------


def test_generic_csv_iso_numeric_and_format(tmp_path):
  iso = _write(tmp_path, "iso.csv",
               "uid,iid,score,when,extra\n7,a,1,2019-01-02,x\n3,b,2,2019-01-03T10:00:00Z,y\n")
  _check(loaders.load("csv", iso, user="uid", item="iid", rating="score", timestamp="when"),
         [7, 3], ["a", "b"],
         [_utc("2019-01-02", "%Y-%m-%d"), _utc("2019-01-03 10:00:00")], [1, 2], name="iso")
  num = _write(tmp_path, "n.tsv", "u\ti\tt\n1\t2\t1.7e9\n")
  _check(loaders.load_csv(num, user="u", item="i", timestamp="t", delimiter="\t"), [1], [2], [1700000000])
  fmt = _write(tmp_path, "f.csv", "u,i,t\n1,2,02/01/2019\n")
  _check(loaders.load_csv(fmt, user="u", item="i", timestamp="t", time_format="%d/%m/%Y"), [1], [2],
         [_utc("2019-01-02", "%Y-%m-%d")])
  _check(loaders.load_csv(fmt, user="u", item="i", id_type="str"), ["1"], ["2"], [0])


def test_generic_csv_ids_turning_to_strings_later(tmp_path, monkeypatch):
  monkeypatch.setattr(loaders, "BLOCK_BYTES", 64)
  rows = [(k, k + 1) for k in range(30)] + [("x9", 3)]
  path = _write(tmp_path, "m.csv", "user,item\n" + "".join(f"{u},{i}\n" for u, i in rows))
  _check(loaders.load_csv(path), [str(u) for u, _ in rows], [str(i) for _, i in rows], list(range(31)))


def test_parquet(tmp_path):
  path = str(tmp_path / "x.parquet")
  table = pa.table({"u": ["b", "a", "b"], "i": [3, 1, 2], "r": [1.0, 2.0, 3.0],
                    "t": pa.array([1_000_000, 2_000_000, 3_500_000], pa.timestamp("ms"))})
  pq.write_table(table, path, row_group_size=2)
  _check(loaders.load("parquet", path, user="u", item="i", rating="r", timestamp="t", batch_size=2),
         ["b", "a", "b"], [3, 1, 2], [1000, 2000, 3500], [1, 2, 3])
  with pytest.raises(DataError, match=r"missing column\(s\) \['user', 'item'\].*\['u', 'i', 'r', 't'\]"):
    loaders.load_parquet(path)
  pq.write_table(pa.table({"u": [1, 2], "i": [1, 2], "t": ["2019-01-01", "soon"]}), path)
  with pytest.raises(DataError, match=r"row 1, column 't'.*'soon'"):
    loaders.load_parquet(path, user="u", item="i", timestamp="t")


# -- bad input ---------------------------------------------------------------------------------------


def test_missing_file(tmp_path):
  with pytest.raises(DataError, match=r"nope.data: file not found"):
    loaders.load_movielens_udata(str(tmp_path / "nope.data"))
  with pytest.raises(DataError, match=r"ratings.dat: file not found"):
    loaders.load("ml-1m", str(tmp_path))


def test_misnamed_column_lists_header(tmp_path):
  path = _write(tmp_path, "ratings.csv", "userID,movieId,rating,timestamp\n1,2,3,4\n")
  with pytest.raises(DataError, match=r"missing column\(s\) \['userId'\].*\['userID', 'movieId'"):
    loaders.load_movielens_csv(path)


def test_unparsable_timestamp_names_line_and_value(tmp_path):
  path = _write(tmp_path, "u.data", "1\t2\t3\t881250949\n1\t3\t3\t881250950\n2\t2\t4\tyesterday\n")
  with pytest.raises(DataError,
                     match=r"u.data, line 3, column 'timestamp': expected an integer, got 'yesterday'"):
    loaders.load_movielens_udata(path)
  csvp = _write(tmp_path, "ratings.csv", "userId,movieId,rating,timestamp\n1,2,3,4\n1,2,3,4.5.6\n")
  with pytest.raises(DataError, match=r"ratings.csv, line 3, column 'timestamp'.*'4.5.6'"):
    loaders.load_movielens_csv(csvp)
  gen = _write(tmp_path, "g.csv", "u,i,t\n1,2,2019-01-01\n1,3,not a date\n")
  with pytest.raises(DataError, match=r"g.csv, line 3, column 't'.*'not a date'"):
    loaders.load_csv(gen, user="u", item="i", timestamp="t")


def test_wrong_field_count_names_line(tmp_path):
  path = _write(tmp_path, "ratings.dat", "1::2::3::4\n1::2::3\n")
  with pytest.raises(DataError, match=r"ratings.dat, line 2: expected 4 fields.*got 3"):
    loaders.load_movielens_dat(path)
  path = _write(tmp_path, "u.data", "1\t2\t3\t4\n\n1\t2\t3\t4\t5\n")
  with pytest.raises(DataError, match=r"u.data, line 3: expected 4 fields.*got 5"):
    loaders.load_movielens_udata(path)
  path = _write(tmp_path, "a.csv", "a,b,1,2\na,b,,3\n")
  with pytest.raises(DataError, match=r"a.csv, line 2, column 'rating': expected a number, got ''"):
    loaders.load_amazon_csv(path)


def test_json_missing_field_and_invalid_line(tmp_path):
  rec = {k: v for k, v in AMAZON_JSON[0].items() if k != "overall"}
  path = _write(tmp_path, "r.json", json.dumps(AMAZON_JSON[0]) + "\n" + json.dumps(rec) + "\n")
  with pytest.raises(DataError, match=r"r.json, line 2: missing field 'overall'.*'asin'"):
    loaders.load_amazon_json(path)
  path = _write(tmp_path, "s.json", json.dumps(AMAZON_JSON[0]) + "\n{not json\n")
  with pytest.raises(DataError, match=r"s.json, line 2: invalid JSON"):
    loaders.load_amazon_json(path)


def test_empty_logs(tmp_path):
  with pytest.raises(DataError, match=r"u.data: no (interactions|data lines)"):
    loaders.load_movielens_udata(_write(tmp_path, "u.data", ""))
  with pytest.raises(DataError, match=r"ratings.dat: no interactions"):
    loaders.load_movielens_dat(_write(tmp_path, "ratings.dat", "\n"))
  with pytest.raises(DataError, match=r"e.json: no records"):
    loaders.load_yelp(_write(tmp_path, "e.json", ""))
  with pytest.raises(DataError, match=r"empty file, expected a header"):
    loaders.load_movielens_csv(_write(tmp_path, "ratings.csv", ""))


def test_dispatch_errors(tmp_path):
  with pytest.raises(DataError, match=r"unknown dataset format 'ml-5m'.*'ml-25m'"):
    loaders.load("ml-5m", str(tmp_path))
  with pytest.raises(DataError, match=r"unknown option\(s\) \['behaviour'\].*'behaviors'"):
    loaders.load("taobao", str(tmp_path), behaviour=["pv"])
  assert set(loaders.FORMATS) >= {
      "ml-100k", "ml-1m", "ml-10m", "ml-20m", "ml-25m", "amazon-csv", "amazon-json", "yelp", "taobao",
      "lastfm-1k", "movietweetings", "adressa", "mind", "recbole", "csv", "parquet"}
