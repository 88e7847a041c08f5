"""Storage: one interface over a local folder and S3 (a real moto server over HTTP)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import helpers_servers as hs
import pytest

from semlayout.errors import SemlayoutError
from semlayout.storage import LocalStore, S3Store, check_key, fetch_to_local, open_store, parse_uri

# real servers, shared with other test modules
moto_server, s3_env, s3_bucket = hs.moto_server, hs.s3_env, hs.s3_bucket
free_port, s3_client = hs.free_port, hs.s3_client


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return open_store(str(tmp_path / "store"))
    bucket = request.getfixturevalue("s3_bucket")
    return open_store(f"s3://{bucket}/some/prefix")


def test_roundtrip_list_exists_delete(store):
    assert store.list() == []
    store.put_bytes("a/b.bin", b"\x00\x01")
    store.put_bytes("a/c.txt", b"hello")
    store.put_bytes("z.txt", b"z")
    assert store.get_bytes("a/b.bin") == b"\x00\x01"
    assert store.list() == ["a/b.bin", "a/c.txt", "z.txt"]
    assert store.list("a/") == ["a/b.bin", "a/c.txt"]
    assert store.exists("a/c.txt") and not store.exists("a/nope")
    store.put_bytes("a/c.txt", b"again")  # overwrite
    assert store.get_bytes("a/c.txt") == b"again"
    store.delete("a/c.txt")
    store.delete("a/c.txt")  # missing is fine
    assert not store.exists("a/c.txt")
    with pytest.raises(SemlayoutError, match="no object 'a/c.txt'"):
        store.get_bytes("a/c.txt")


def test_trees_roundtrip(store, tmp_path):
    src = tmp_path / "src"
    (src / "sem").mkdir(parents=True)
    (src / "manifest.csv").write_text("id\n1\n")
    (src / "sem" / "1.png").write_bytes(os.urandom(1000))
    keys = store.upload_tree(src, "pairs/x")
    assert keys == ["pairs/x/manifest.csv", "pairs/x/sem/1.png"]
    out = store.download_tree("pairs/x", tmp_path / "out")
    assert (out / "manifest.csv").read_text() == "id\n1\n"
    assert (out / "sem" / "1.png").read_bytes() == (src / "sem" / "1.png").read_bytes()
    # a prefix that is only a string prefix of another folder is not included
    store.put_bytes("pairs/xy/other.txt", b"o")
    out2 = store.download_tree("pairs/x/", tmp_path / "out2")
    assert sorted(p.relative_to(out2).as_posix() for p in out2.rglob("*") if p.is_file()) == [
        "manifest.csv",
        "sem/1.png",
    ]
    with pytest.raises(SemlayoutError, match="nothing stored"):
        store.download_tree("missing", tmp_path / "out3")


@pytest.mark.parametrize("key", ["../x", "a/../../x", "/etc/passwd", "", "a/./b", "a\\b", "C:/x"])
def test_bad_keys_refused(store, key):
    with pytest.raises(SemlayoutError):
        store.put_bytes(key, b"x")
    with pytest.raises(SemlayoutError):
        check_key(key)


def test_local_put_is_atomic_and_stays_inside(tmp_path):
    st = LocalStore(tmp_path / "root")
    st.put_bytes("k/v", b"1")
    assert (tmp_path / "root" / "k" / "v").read_bytes() == b"1"
    # a leftover temp file from a killed writer is never listed
    (tmp_path / "root" / "k" / ".v2.tmp-abc").write_bytes(b"partial")
    assert st.list() == ["k/v"]
    assert not (tmp_path / "x").exists()


def test_uri_parsing():
    assert parse_uri("/a/b") == ("file", "", "/a/b")
    assert parse_uri("file:///a/b") == ("file", "", "/a/b")
    assert parse_uri("s3://bkt/p/q/") == ("s3", "bkt", "p/q")
    assert isinstance(open_store("file:///tmp/x"), LocalStore)
    s3 = open_store("s3://my-bucket/pre")
    assert isinstance(s3, S3Store) and s3.uri == "s3://my-bucket/pre"
    assert s3.url_for("objects/a.png") == "s3://my-bucket/pre/objects/a.png"
    for bad in ["s3:///prefix", "s3://", "", "gs://b/p", "s3://AB/x", "s3://a/x", "file://host/x"]:
        with pytest.raises(SemlayoutError):
            open_store(bad)


def test_endpoint_from_environment_variables(s3_bucket, s3_env, monkeypatch):
    # AWS_ENDPOINT_URL_S3 takes precedence over AWS_ENDPOINT_URL (boto3's own rule).
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_env["AWS_ENDPOINT_URL"])
    st = open_store(f"s3://{s3_bucket}")
    st.put_bytes("k", b"v")
    obj = s3_client(s3_env["AWS_ENDPOINT_URL"]).get_object(Bucket=s3_bucket, Key="k")
    assert obj["Body"].read() == b"v"


def test_missing_bucket_is_a_clear_error(s3_env):
    st = open_store("s3://no-such-bucket-here/p")
    with pytest.raises(SemlayoutError, match="does not exist"):
        st.list()
    with pytest.raises(SemlayoutError, match="does not exist"):
        st.exists("x")
    with pytest.raises(SemlayoutError, match="does not exist"):
        st.put_bytes("x", b"1")


def test_unreachable_endpoint_fails_fast(s3_env, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    t0 = time.monotonic()
    with pytest.raises(SemlayoutError, match="cannot reach"):
        open_store("s3://some-bucket/p").list()
    assert time.monotonic() - t0 < 20


def test_missing_credentials_is_a_clear_error(s3_env, monkeypatch, tmp_path):
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(SemlayoutError, match="no AWS credentials"):
        open_store("s3://some-bucket/p").list()


def test_fetch_to_local(s3_bucket, tmp_path):
    local = tmp_path / "here"
    local.mkdir()
    assert fetch_to_local(str(local), tmp_path / "unused") == local
    with pytest.raises(SemlayoutError, match="not found"):
        fetch_to_local(str(tmp_path / "missing"), tmp_path / "unused")
    st = open_store(f"s3://{s3_bucket}/data")
    st.put_bytes("pairs/manifest.csv", b"m")
    st.put_bytes("pairs/sem/1.png", b"p")
    st.put_bytes("single.json", b"{}")
    out = fetch_to_local(f"s3://{s3_bucket}/data/pairs", tmp_path / "dl")
    assert out == tmp_path / "dl"
    assert (out / "manifest.csv").read_bytes() == b"m" and (out / "sem/1.png").read_bytes() == b"p"
    one = fetch_to_local(f"s3://{s3_bucket}/data/single.json", tmp_path / "dl1")
    assert one == tmp_path / "dl1" / "single.json" and one.read_bytes() == b"{}"
    with pytest.raises(SemlayoutError):
        fetch_to_local(f"s3://{s3_bucket}/data/none", tmp_path / "dl2")
    assert not (tmp_path / "dl2").exists() or not any(Path(tmp_path / "dl2").iterdir())
