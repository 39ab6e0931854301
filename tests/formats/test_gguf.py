"""GGUF reader and writer: round trips, agreement with gguf-py, and a clear error for each corruption."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from gguf import GGUFReader, GGUFValueType

from edgellm.errors import FormatError, UnsupportedError
from edgellm.formats.gguf import GGUFFile, TensorData, write_gguf
from edgellm.formats.quants import FORMATS, GGMLType


def _s(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw


def raw_gguf(kvs=(), tensors=(), data=b"", version=3, n_tensors=None, n_kv=None, alignment=32) -> bytes:
    """Hand-assembled GGUF bytes, so each test can lie in exactly one field."""
    out = b"GGUF" + struct.pack("<IQQ", version, len(tensors) if n_tensors is None else n_tensors,
                                len(kvs) if n_kv is None else n_kv)  # fmt: skip
    for key, vtype, payload in kvs:
        out += _s(key) + struct.pack("<I", vtype) + payload
    for name, dims, ttype, offset in tensors:
        out += _s(name) + struct.pack("<I", len(dims)) + struct.pack(f"<{len(dims)}Q", *dims)
        out += struct.pack("<IQ", ttype, offset)
    out += b"\0" * (-len(out) % alignment)
    return out + data


F32_ROW = np.arange(8, dtype=np.float32).tobytes()


@pytest.fixture
def write(tmp_path):
    def _write(raw: bytes, name: str = "m.gguf"):
        path = tmp_path / name
        path.write_bytes(raw)
        return path

    return _write


def test_round_trip_keeps_metadata_types_and_tensor_bytes(tmp_path):
    rng = np.random.default_rng(1)
    meta = {
        "general.architecture": "llama",
        "general.name": "round trip ✓",
        "some.u32": 7,
        "some.i32": -3,
        "some.f32": 0.25,
        "some.bool": True,
        "some.strings": ["a", "bé", ""],
        "some.floats": np.array([1.5, -2.0], dtype=np.float32),
        "some.ints": np.array([1, 2, 3], dtype=np.int32),
    }
    q = FORMATS[GGMLType.Q4_K]
    blocks = rng.integers(0, 256, size=(3, q.type_size), dtype=np.uint8)
    blocks[:, :4] = np.frombuffer(np.array([0.01, 0.001] * 3, dtype=np.float16).tobytes(), np.uint8).reshape(3, 4)
    tensors = [
        TensorData("a", GGMLType.F32, (2, 8), np.arange(16, dtype=np.float32).reshape(2, 8)),
        TensorData("b", GGMLType.Q4_K, (3, 256), blocks.reshape(-1)),
        TensorData("c", GGMLType.F16, (5,), np.ones(5, dtype=np.float16)),
    ]
    path = write_gguf(tmp_path / "rt.gguf", meta, tensors)
    with GGUFFile(path) as g:
        assert g.metadata["general.name"] == "round trip ✓"
        assert g.metadata["some.strings"] == ["a", "bé", ""]
        np.testing.assert_array_equal(g.metadata["some.ints"], [1, 2, 3])
        assert g.metadata_types["some.i32"][0] == GGUFValueType.INT32
        assert g.metadata_types["some.floats"] == (GGUFValueType.ARRAY, GGUFValueType.FLOAT32)
        assert g.tensors["b"].shape == (3, 256) and g.tensors["b"].type == GGMLType.Q4_K
        assert g.raw("b").tobytes() == blocks.tobytes()
        assert g.raw("a").view(np.float32).reshape(2, 8)[1, 7] == 15
        # Rewriting with the recorded types reproduces the file byte for byte.
        again = write_gguf(tmp_path / "rt2.gguf", g.metadata, [
            TensorData(t.name, t.type, t.shape, g.raw(t.name).reshape(-1)) for t in g.tensors.values()
        ], metadata_types=g.metadata_types)  # fmt: skip
    assert again.read_bytes() == path.read_bytes()


def test_written_file_reads_identically_in_gguf_py(tiny_llama):
    ours = GGUFFile(tiny_llama)
    theirs = GGUFReader(tiny_llama)
    assert {t.name for t in theirs.tensors} == set(ours.tensors)
    for t in theirs.tensors:
        info = ours.tensors[t.name]
        assert tuple(int(d) for d in reversed(t.shape)) == info.shape
        assert int(t.data_offset) == info.offset and int(t.n_bytes) == info.n_bytes
        assert int(t.tensor_type) == info.type
    assert theirs.fields["general.architecture"].contents() == ours.metadata["general.architecture"]


def test_writer_refuses_to_overwrite(tmp_path):
    path = tmp_path / "x.gguf"
    path.write_bytes(b"user data")
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        write_gguf(path, {"general.architecture": "llama"}, [])
    assert path.read_bytes() == b"user data"


def test_tensor_views_are_zero_copy(tiny_llama):
    with GGUFFile(tiny_llama) as g:
        raw = g.raw("token_embd.weight")
        assert not raw.flags.owndata and not raw.flags.writeable


GOOD_KV = [("general.architecture", GGUFValueType.STRING, _s("llama"))]
GOOD_TENSOR = [("w", (8, 1), GGMLType.F32, 0)]

# (id, bytes, expected message fragment). Each lies in exactly one place.
CORRUPTIONS = [
    ("empty", b"", "file is empty"),
    ("not_gguf", b"hello, this is a text file\n" * 4, "not a GGUF file (starts with b'hell'"),
    ("truncated_header", b"GGUF" + struct.pack("<I", 3) + b"\0\0", "tensor count needs 8 bytes at offset 8"),
    ("version_1", raw_gguf(GOOD_KV, version=1), "GGUF version 1 is not supported; supported: 2, 3"),
    ("lying_tensor_count", raw_gguf(GOOD_KV, n_tensors=2**40), "declares 1099511627776 tensors"),
    ("lying_kv_count", raw_gguf(GOOD_KV, n_kv=2**50), "metadata keys, which cannot fit"),
    ("string_length_lie", b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 2**60) + b"key",
     "length 1152921504606846976"),
    ("array_count_lie", raw_gguf([("tokenizer.ggml.tokens", GGUFValueType.ARRAY,
                                   struct.pack("<IQ", GGUFValueType.STRING, 2**40))]),
     "declares 1099511627776 items of STRING"),
    ("unknown_value_type", raw_gguf([("k", 99, b"\0" * 8)]), "metadata 'k' has unknown value type 99"),
    ("duplicate_key", raw_gguf(GOOD_KV * 2), "metadata key 'general.architecture' appears twice"),
    ("bad_alignment", raw_gguf(GOOD_KV + [("general.alignment", GGUFValueType.UINT32, struct.pack("<I", 24))]),
     "general.alignment is 24, expected a power of two"),
    ("too_many_dims", raw_gguf(GOOD_KV, [("w", (1,) * 7, GGMLType.F32, 0)]), "n_dims=7, expected 1..4"),
    ("zero_dim", raw_gguf(GOOD_KV, [("w", (8, 0), GGMLType.F32, 0)]), "impossible dimensions [8, 0]"),
    ("tensor_past_end", raw_gguf(GOOD_KV, [("w", (8, 4), GGMLType.F32, 0)], F32_ROW),
     "tensor 'w' needs bytes 128..256, but the file ends at 160"),
    ("truncated_data", raw_gguf(GOOD_KV, GOOD_TENSOR, F32_ROW[:20]), "truncated download?"),
    ("duplicate_tensor", raw_gguf(GOOD_KV, GOOD_TENSOR * 2, F32_ROW), "tensor 'w' appears twice"),
    ("unsupported_type", raw_gguf(GOOD_KV, [("w", (256, 1), 16, 0)], b"\0" * 256),
     "tensor 'w': tensor type 16 (IQ2_XXS) is not supported; supported: F32, F16"),
    ("row_not_whole_blocks", raw_gguf(GOOD_KV, [("w", (48, 1), GGMLType.Q4_0, 0)], b"\0" * 64),
     "rows have 48 weights, not a multiple of Q4_0's block size 32"),
    ("misaligned_offset", raw_gguf(GOOD_KV, [("w", (8, 1), GGMLType.F32, 4)], F32_ROW * 2),
     "starts at data offset 4, not a multiple of the alignment 32"),
    ("bad_utf8_key", b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 2) + b"\xff\xfe"
     + struct.pack("<I", GGUFValueType.UINT8) + b"\0", "is not valid UTF-8"),
]


@pytest.mark.parametrize("raw,message", [c[1:] for c in CORRUPTIONS], ids=[c[0] for c in CORRUPTIONS])
def test_corrupt_file_gives_clear_error(write, raw, message):
    path = write(raw)
    with pytest.raises((FormatError, UnsupportedError)) as info:
        GGUFFile(path)
    text = str(info.value)
    assert message in text
    assert str(path) in text and "\n" not in text


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(FormatError, match="no such file"):
        GGUFFile(tmp_path / "absent.gguf")
    with pytest.raises(FormatError, match="is a directory"):
        GGUFFile(tmp_path)


def test_every_prefix_of_a_valid_file_is_rejected_cleanly(tiny_llama, write):
    """Truncating anywhere gives a FormatError, never a crash or a huge allocation."""
    raw = tiny_llama.read_bytes()
    cuts = sorted(set(np.linspace(1, len(raw) - 1, 60).astype(int)) | set(range(1, 64)))
    for cut in cuts:
        with pytest.raises(FormatError):
            GGUFFile(write(raw[:cut], f"cut{cut}.gguf"))


def test_random_byte_flips_never_crash(tiny_llama, write):
    raw = bytearray(tiny_llama.read_bytes())
    header_end = 4096  # corrupt the header region, where lies matter
    rng = np.random.default_rng(0)
    for trial in range(150):
        bad = bytearray(raw)
        for pos in rng.integers(4, header_end, size=3):
            bad[pos] = rng.integers(0, 256)
        try:
            GGUFFile(write(bytes(bad), f"flip{trial}.gguf")).close()
        except (FormatError, UnsupportedError):
            pass


@pytest.mark.real_model
@pytest.mark.parametrize("name", ["smollm2-135m", pytest.param("gemma3-270m", marks=pytest.mark.slow)])
def test_real_files_match_gguf_py(real_model_path, name):
    path = real_model_path(name)
    ours = GGUFFile(path)
    theirs = GGUFReader(path)  # slow on big vocabularies: it wraps every string in Python objects
    assert len(theirs.tensors) == len(ours.tensors)
    for t in theirs.tensors:
        info = ours.tensors[t.name]
        assert int(t.data_offset) == info.offset and int(t.n_bytes) == info.n_bytes
    tokens = theirs.fields["tokenizer.ggml.tokens"]
    assert ours.metadata["tokenizer.ggml.tokens"][:50] == [tokens.contents(i) for i in range(50)]


def test_writer_streams_one_tensor_at_a_time(tmp_path):
    """Tensor data given as functions is made only when the writer reaches it, after the header, and each
    array is released before the next is made: writing a model needs about one tensor of memory."""
    import weakref

    made: list[weakref.ref] = []

    def make(i):
        def data():
            assert all(ref() is None for ref in made), "an earlier tensor is still held"
            arr = np.full(256, i, dtype=np.float32)
            made.append(weakref.ref(arr))
            return arr

        return data

    tensors = [TensorData(f"t{i}", GGMLType.F32, (256,), make(i)) for i in range(5)]
    path = write_gguf(tmp_path / "s.gguf", {"general.architecture": "llama"}, tensors)
    g = GGUFFile(path)
    assert len(made) == 5
    for i in range(5):
        np.testing.assert_array_equal(g.raw(f"t{i}").view(np.float32), np.full(256, i, dtype=np.float32))


def test_writer_refuses_data_of_the_wrong_size_and_leaves_no_file(tmp_path):
    tensors = [TensorData("t", GGMLType.F32, (256,), lambda: np.zeros(255, np.float32))]
    with pytest.raises(FormatError, match="1020 bytes given, F32 \\(256,\\) needs 1024"):
        write_gguf(tmp_path / "bad.gguf", {"general.architecture": "llama"}, tensors)
    assert list(tmp_path.iterdir()) == []
