"""Real FER data-set loaders, the decode-once cache and describe_dataset, on tiny fixtures."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fixtures_fer as fx  # noqa: E402

from sslzoo.data import cache as cache_mod  # noqa: E402
from sslzoo.data import labels as L  # noqa: E402
from sslzoo.data.fer import affectnet, ckplus, fer2013, folder, rafdb, sfew  # noqa: E402
from sslzoo.errors import SSLZooError  # noqa: E402

LOADERS = {"rafdb": rafdb.rafdb, "sfew": sfew.sfew, "affectnet": affectnet.affectnet,
           "ckplus": ckplus.ckplus, "fer2013": fer2013.fer2013, "folder": folder.folder}
SIZE = 24


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SSLZOO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("SSLZOO_DECODE_WORKERS", "2")
    return tmp_path / "cache"


def decoded_dir(tmp_path) -> Path:
    return tmp_path / "cache" / "decoded"


def entries(tmp_path) -> list[str]:
    d = decoded_dir(tmp_path)
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


def counts(labels, n) -> list[int]:
    return np.bincount(np.asarray(labels), minlength=n).tolist()


def assert_paired(part) -> None:
    """Pixels and labels stay paired: the fixture colour encodes the canonical class."""
    got = [fx.label_of(part.images[i]) for i in range(len(part))]
    assert got == part.labels.tolist()


@pytest.fixture
def count_decodes(monkeypatch):
    calls = []
    real = cache_mod.decode_one

    def counting(path, *a, **k):
        calls.append(str(path))
        return real(path, *a, **k)
    monkeypatch.setattr(cache_mod, "decode_one", counting)
    return calls


# --------------------------------------------------------------------------- contract

def test_registered_with_descriptions():
    from sslzoo.registry import DATASETS, describe
    for name, fn in LOADERS.items():
        assert DATASETS.get(name) is fn
        assert describe(fn) and len(describe(fn)) < 110


@pytest.mark.parametrize("name", sorted(LOADERS))
def test_missing_root_says_data_root_and_layout(name, tmp_path):
    with pytest.raises(SSLZooError) as e:
        LOADERS[name](root=None)
    msg = str(e.value)
    assert "pass --data-root PATH" in msg and "Expected layout" in msg and "ROOT/" in msg
    with pytest.raises(SSLZooError, match="does not exist"):
        LOADERS[name](root=str(tmp_path / "nowhere"))


def test_unknown_option_names_key_and_accepted(tmp_path):
    fx.make_rafdb(tmp_path / "raf")
    with pytest.raises(SSLZooError) as e:
        rafdb.rafdb(root=str(tmp_path / "raf"), image_size=SIZE, bogus=1)
    assert "'bogus'" in str(e.value) and "images" in str(e.value) and "on_bad_image" in str(e.value)
    with pytest.raises(SSLZooError, match="images"):
        rafdb.rafdb(root=str(tmp_path / "raf"), image_size=SIZE, images="weird")


# --------------------------------------------------------------------------- RAF-DB

def test_rafdb_partition_counts_labels_ids(tmp_path):
    made = fx.make_rafdb(tmp_path / "raf", train=3, test={"fear": 2, "happiness": 1, **{
        c: 1 for c in fx.FER7 if c not in ("fear", "happiness")}})
    b = rafdb.rafdb(root=str(tmp_path / "raf"), image_size=SIZE)
    assert b.classes == L.FER7 and b.num_classes == 7
    assert counts(b.train.labels, 7) == [3] * 7
    assert counts(b.test.labels, 7) == [1, 2, 1, 1, 1, 1, 1]
    assert b.train.images.dtype == np.uint8 and b.train.images.shape[1:] == (SIZE, SIZE, 3)
    assert b.train.images.is_memory_mapped()
    assert_paired(b.train)
    assert_paired(b.test)
    for i, label in zip(b.train.ids + b.test.ids, b.train.labels.tolist() + b.test.labels.tolist()):
        assert made["files"][i] == label
    assert b.train.ids[0] == "Image/aligned/train_00001_aligned.jpg"
    assert b.info["label_mapping"]["1"] == "surprise (0)" and b.info["label_mapping"]["7"] == "neutral (6)"
    assert b.skipped == []


def test_rafdb_original_images_and_clear_error(tmp_path):
    fx.make_rafdb(tmp_path / "raf", images="original")
    with pytest.raises(SSLZooError) as e:
        rafdb.rafdb(root=str(tmp_path / "raf"), image_size=SIZE)
    assert "Image/aligned" in str(e.value) and "images=original" in str(e.value)
    b = rafdb.rafdb(root=str(tmp_path / "raf"), image_size=SIZE, images="original")
    assert b.train.ids[0] == "Image/original/train_00001.jpg"
    assert_paired(b.train)


def test_rafdb_list_variant_zero_based(tmp_path):
    made = fx.make_rafdb(tmp_path / "raf", variant="list")
    b = rafdb.rafdb(root=str(tmp_path / "raf"), image_size=SIZE)     # variant auto-detected
    assert b.info["variant"] == "list"
    assert counts(b.train.labels, 7) == [2] * 7 and counts(b.test.labels, 7) == [1] * 7
    assert all(made["files"][i] == lab for i, lab in zip(b.train.ids, b.train.labels))
    assert_paired(b.test)
    # explicit names work too
    b2 = rafdb.rafdb(root=str(tmp_path / "raf"), image_size=SIZE, variant="list",
                     train_list="train_label.txt", test_list="test_label.txt", label_base=0)
    assert b2.train.ids == b.train.ids


def test_rafdb_missing_label_file(tmp_path):
    fx.make_rafdb(tmp_path / "raf")
    (tmp_path / "raf" / "EmoLabel" / "list_patition_label.txt").unlink()
    with pytest.raises(SSLZooError) as e:
        rafdb.rafdb(root=str(tmp_path / "raf"), image_size=SIZE)
    assert "list_patition_label.txt" in str(e.value) and "Expected layout" in str(e.value)
    with pytest.raises(SSLZooError, match="list_patition_label.txt.*not found"):
        rafdb.rafdb(root=str(tmp_path / "raf"), image_size=SIZE, variant="partition")


def test_rafdb_unknown_label_id_names_file_and_line(tmp_path):
    fx.make_rafdb(tmp_path / "raf")
    f = tmp_path / "raf" / "EmoLabel" / "list_patition_label.txt"
    lines = f.read_text().splitlines()
    lines[2] = lines[2].split()[0] + " 8"
    f.write_text("\n".join(lines) + "\n")
    with pytest.raises(SSLZooError) as e:
        rafdb.rafdb(root=str(tmp_path / "raf"), image_size=SIZE)
    assert "list_patition_label.txt, line 3" in str(e.value) and "'8'" in str(e.value)
    assert "Expected layout" in str(e.value)
    assert entries(tmp_path) == []


def test_label_file_names_missing_image(tmp_path):
    fx.make_rafdb(tmp_path / "raf")
    (tmp_path / "raf" / "Image" / "aligned" / "train_00004_aligned.jpg").unlink()
    with pytest.raises(SSLZooError) as e:
        rafdb.rafdb(root=str(tmp_path / "raf"), image_size=SIZE)
    msg = str(e.value)
    assert "Image/aligned/train_00004_aligned.jpg: file not found" in msg
    assert "Expected layout" in msg and "1 of 21" in msg
    assert entries(tmp_path) == []


def test_empty_class_is_an_error(tmp_path):
    fx.make_rafdb(tmp_path / "raf", train={c: (0 if c == "fear" else 2) for c in fx.FER7})
    with pytest.raises(SSLZooError) as e:
        rafdb.rafdb(root=str(tmp_path / "raf"), image_size=SIZE)
    assert "fear" in str(e.value) and "train split" in str(e.value)
    assert "list_patition_label.txt" in str(e.value) and "Expected layout" in str(e.value)


# --------------------------------------------------------------------------- SFEW

def test_sfew_counts_and_val_is_test(tmp_path):
    fx.make_sfew(tmp_path / "sfew", train={"Happy": 3, **{c: 2 for c in fx.SFEW_FOLDERS if c != "Happy"}})
    b = sfew.sfew(root=str(tmp_path / "sfew"), image_size=SIZE)
    assert b.classes == L.FER7
    assert counts(b.train.labels, 7) == [2, 2, 2, 3, 2, 2, 2]
    assert counts(b.test.labels, 7) == [1] * 7
    assert all(i.startswith("Val/") for i in b.test.ids)
    assert_paired(b.train)
    assert b.info["label_mapping"]["Angry"] == "anger (5)"


def test_sfew_unknown_and_empty_class_folders(tmp_path):
    fx.make_sfew(tmp_path / "sfew")
    (tmp_path / "sfew" / "Train" / "Bored").mkdir()
    with pytest.raises(SSLZooError) as e:
        sfew.sfew(root=str(tmp_path / "sfew"), image_size=SIZE)
    assert "Bored" in str(e.value) and "happy" in str(e.value) and "class_map" in str(e.value)
    with pytest.raises(SSLZooError) as e:     # mapped, but empty
        sfew.sfew(root=str(tmp_path / "sfew"), image_size=SIZE, class_map={"Bored": "neutral"})
    assert "Bored" in str(e.value) and "no images" in str(e.value)
    b = sfew.sfew(root=str(tmp_path / "sfew"), image_size=SIZE, class_map={"bored": None})
    assert len(b.train) == 14 and b.info["label_mapping"]["Bored"] == "ignored"


# --------------------------------------------------------------------------- AffectNet

def test_affectnet_8_classes_drops_8_to_10(tmp_path):
    made = fx.make_affectnet(tmp_path / "an", train=2, val=1, dropped=1)
    b = affectnet.affectnet(root=str(tmp_path / "an"), image_size=SIZE)
    assert b.classes == L.FER8
    assert counts(b.train.labels, 8) == [2] * 8 and counts(b.test.labels, 8) == [1] * 8
    assert b.info["dropped"]["train"] == {"8 (None)": 1, "9 (Uncertain)": 1, "10 (Non-Face)": 1}
    assert all(made["files"][i] == lab for i, lab in zip(b.test.ids, b.test.labels))
    assert b.info["label_mapping"]["7"] == "contempt (7)" and b.info["label_mapping"]["9"] == "dropped"


def test_affectnet_7_classes_drops_contempt(tmp_path):
    fx.make_affectnet(tmp_path / "an", train=2, val=1)
    b = affectnet.affectnet(root=str(tmp_path / "an"), image_size=SIZE, num_classes=7)
    assert b.classes == L.FER7
    assert counts(b.train.labels, 7) == [2] * 7 and len(b.test) == 7
    assert b.info["dropped"]["test"]["7 (Contempt)"] == 1


def test_affectnet_face_box_crop(tmp_path):
    fx.make_affectnet(tmp_path / "an", train=1, val=1, dropped=0)
    root = str(tmp_path / "an")
    cropped = affectnet.affectnet(root=root, image_size=SIZE)               # auto: photo > box
    whole = affectnet.affectnet(root=root, image_size=SIZE, crop="never")
    forced = affectnet.affectnet(root=root, image_size=SIZE, crop="always")
    assert_paired(cropped.train)
    # the whole output (but the 2-pixel resampling border) is the face box's colour
    inner = np.asarray(cropped.train.images)[:, 2:-2, 2:-2, 0].astype(int)
    wanted = np.array([fx.class_value(c) for c in cropped.train.labels])[:, None, None]
    assert np.all(np.abs(inner - wanted) <= 8)
    assert np.all(np.abs(np.asarray(whole.train.images)[:, 0, 0, :].astype(int) - fx.BACKGROUND) <= 8)
    assert np.array_equal(np.asarray(forced.train.images), np.asarray(cropped.train.images))
    assert len(entries(tmp_path)) == 3                                    # crop option is in the key


def test_affectnet_precropped_auto_does_not_crop(tmp_path):
    fx.make_affectnet(tmp_path / "an", train=1, val=1, dropped=0, precropped=True,
                      csv_dir="Manually_Annotated_file_lists")
    b = affectnet.affectnet(root=str(tmp_path / "an"), image_size=SIZE)
    assert b.info["label_files"]["train"] == "Manually_Annotated_file_lists/training.csv"
    assert_paired(b.train)
    inner = np.asarray(b.train.images)[:, 2:-2, 2:-2, 0].astype(int)
    wanted = np.array([fx.class_value(c) for c in b.train.labels])[:, None, None]
    assert np.all(np.abs(inner - wanted) <= 8)


def test_affectnet_unknown_expression_names_line(tmp_path):
    fx.make_affectnet(tmp_path / "an", train=1, val=1, dropped=0)
    f = tmp_path / "an" / "validation.csv"
    lines = f.read_text().splitlines()
    parts = lines[3].split(",")
    parts[-3] = "11"
    lines[3] = ",".join(parts)
    f.write_text("\n".join(lines) + "\n")
    with pytest.raises(SSLZooError) as e:
        affectnet.affectnet(root=str(tmp_path / "an"), image_size=SIZE)
    assert "validation.csv, line 4" in str(e.value) and "'11'" in str(e.value)
    assert "Manually_Annotated_Images" in str(e.value)


# --------------------------------------------------------------------------- CK+

def test_ckplus_first_last_frame_rule_and_contempt(tmp_path):
    fx.make_ckplus(tmp_path / "ck")
    b = ckplus.ckplus(root=str(tmp_path / "ck"), image_size=SIZE)
    assert b.classes == L.FER7 and b.train is b.test
    assert len(b.test) == 12                                  # 6 sequences (contempt dropped) x 2
    assert_paired(b.test)
    by_id = dict(zip(b.test.ids, b.test.labels.tolist()))
    assert by_id["cohn-kanade-images/S011/001/S011_001_00000001.png"] == L.CANONICAL["neutral"]
    assert by_id["cohn-kanade-images/S011/001/S011_001_00000004.png"] == L.CANONICAL["anger"]   # 4 frames
    assert "cohn-kanade-images/S011/001/S011_001_00000002.png" not in by_id     # middle frame
    assert not any(i.startswith("cohn-kanade-images/S099") for i in by_id)       # unlabelled
    assert not any(i.startswith("cohn-kanade-images/S012") for i in by_id)       # contempt
    img = np.asarray(b.test.images[0])
    assert np.array_equal(img[..., 0], img[..., 1]) and np.array_equal(img[..., 1], img[..., 2])
    b8 = ckplus.ckplus(root=str(tmp_path / "ck"), image_size=SIZE, keep_contempt=True)
    assert b8.classes == L.FER8 and len(b8.test) == 14
    assert counts(b8.test.labels, 8)[7] == 1 and counts(b8.test.labels, 8)[6] == 7


def test_ckplus_bad_emotion_file(tmp_path):
    fx.make_ckplus(tmp_path / "ck")
    bad = next((tmp_path / "ck" / "Emotion").rglob("*_emotion.txt"))
    bad.write_text("   9.0000000e+00\n")
    with pytest.raises(SSLZooError) as e:
        ckplus.ckplus(root=str(tmp_path / "ck"), image_size=SIZE)
    assert bad.name in str(e.value) and "Expected layout" in str(e.value)


# --------------------------------------------------------------------------- FER2013

def test_fer2013_usage_splits(tmp_path):
    fx.make_fer2013(tmp_path / "fer", {"Training": 3, "PublicTest": 1, "PrivateTest": 2})
    b = fer2013.fer2013(root=str(tmp_path / "fer"), image_size=SIZE)
    assert b.classes == L.FER7
    assert counts(b.train.labels, 7) == [3] * 7 and counts(b.test.labels, 7) == [2] * 7
    assert_paired(b.train)
    assert_paired(b.test)
    assert b.train.ids[0] == "fer2013.csv#line=2"
    img = np.asarray(b.train.images[0])
    assert np.array_equal(img[..., 0], img[..., 2])
    pub = fer2013.fer2013(root=str(tmp_path / "fer"), image_size=48, test_split="PublicTest")
    assert counts(pub.test.labels, 7) == [1] * 7 and pub.image_size == 48
    assert b.info["label_mapping"]["0"] == "anger (5)"
    # ROOT may be the CSV itself
    same = fer2013.fer2013(root=str(tmp_path / "fer" / "fer2013.csv"), image_size=SIZE)
    assert same.info["cache"]["hit"]


def test_fer2013_bad_rows(tmp_path):
    fx.make_fer2013(tmp_path / "fer", {"Training": 3, "PublicTest": 0, "PrivateTest": 1})
    f = tmp_path / "fer" / "fer2013.csv"
    lines = f.read_text().splitlines()
    good = lines[:]
    lines[5] = lines[5].replace(",Training", " 7,Training")          # 2305 pixels
    f.write_text("\n".join(lines) + "\n")
    with pytest.raises(SSLZooError, match="line=6"):
        fer2013.fer2013(root=str(tmp_path / "fer"), image_size=SIZE)
    assert entries(tmp_path) == []
    with pytest.warns(UserWarning, match="skipped 1 of 28"):
        b = fer2013.fer2013(root=str(tmp_path / "fer"), image_size=SIZE, max_bad_fraction=0.1)
    assert len(b.train) == 20 and b.skipped[0].startswith("fer2013.csv#line=6")
    good[3] = "9" + good[3][1:]
    f.write_text("\n".join(good) + "\n")
    with pytest.raises(SSLZooError, match="line 4: unknown emotion id '9'"):
        fer2013.fer2013(root=str(tmp_path / "fer"), image_size=SIZE)


# --------------------------------------------------------------------------- folder

def test_folder_class_map_and_splits(tmp_path):
    splits = {"tr": {"joy": 2, "Sad": 2, "ANGRY": 2, "calm": 2, "surprise": 2, "fear": 2,
                     "disgust": 2, "junk": 1},
              "te": {"joy": 1, "sad": 1, "angry": 1, "calm": 1, "surprise": 1, "fear": 1,
                     "disgust": 1}}
    fx.make_folder(tmp_path / "f", splits, class_to_canonical={"joy": "happiness", "calm": "neutral"})
    root = str(tmp_path / "f")
    with pytest.raises(SSLZooError) as e:
        folder.folder(root=root, image_size=SIZE)                       # no train/ folder
    assert "train" in str(e.value) and "Expected layout" in str(e.value)
    with pytest.raises(SSLZooError) as e:
        folder.folder(root=root, image_size=SIZE, train_split="tr", test_split="te")
    assert "'calm'" in str(e.value) and "happiness" in str(e.value)
    b = folder.folder(root=root, image_size=SIZE, train_split="tr", test_split="te",
                      class_map=json.dumps({"joy": "happiness", "Calm": "neutral", "junk": None}))
    assert b.classes == L.FER7
    assert counts(b.train.labels, 7) == [2] * 7 and counts(b.test.labels, 7) == [1] * 7
    assert_paired(b.train)
    with pytest.raises(SSLZooError, match="'smile'"):
        folder.folder(root=root, image_size=SIZE, train_split="tr", test_split="te",
                      class_map={"joy": "smile"})


def test_folder_contempt_means_fer8(tmp_path):
    splits = {s: {c: n for c in ("happy", "sad", "angry", "neutral", "surprise", "fear",
                                 "disgust", "contempt")} for s, n in (("train", 1), ("test", 1))}
    fx.make_folder(tmp_path / "f", splits, ext=".png")
    b = folder.folder(root=str(tmp_path / "f"), image_size=SIZE)
    assert b.classes == L.FER8 and counts(b.train.labels, 8) == [1] * 8


# --------------------------------------------------------------------------- cache

def test_cache_reused_then_invalidated(tmp_path, count_decodes):
    fx.make_folder(tmp_path / "f")
    root = str(tmp_path / "f")
    first = folder.folder(root=root, image_size=SIZE)
    assert len(count_decodes) == 21 and not first.info["cache"]["hit"]
    count_decodes.clear()
    second = folder.folder(root=root, image_size=SIZE)
    assert count_decodes == [] and second.info["cache"]["hit"]
    assert np.array_equal(np.asarray(first.train.images), np.asarray(second.train.images))
    assert second.train.ids == first.train.ids
    meta = json.loads((Path(second.info["cache"]["dir"]) / "meta.json").read_text())
    assert meta["ids"][:3] == first.train.ids[:3] and len(meta["labels"]) == 21
    # a modified file -> new key, full decode into a new entry
    target = tmp_path / "f" / "train" / "happy" / sorted(os.listdir(tmp_path / "f" / "train" / "happy"))[0]
    fx.write_image(target, L.CANONICAL["happiness"], (40, 40), seed=99)
    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    third = folder.folder(root=root, image_size=SIZE)
    assert len(count_decodes) == 21 and not third.info["cache"]["hit"]
    assert third.info["cache"]["dir"] != second.info["cache"]["dir"]
    # an added file -> new key again
    count_decodes.clear()
    fx.write_image(tmp_path / "f" / "test" / "sad" / "extra.jpg", L.CANONICAL["sadness"])
    fourth = folder.folder(root=root, image_size=SIZE)
    assert len(count_decodes) == 22 and len(fourth.test) == 8
    # other image size -> other entry; cache=False writes nothing
    n = len(entries(tmp_path))
    count_decodes.clear()
    off = folder.folder(root=root, image_size=16, cache=False)
    assert off.info["cache"]["dir"] is None and len(entries(tmp_path)) == n
    assert not off.train.images.is_memory_mapped() and off.image_size == 16


def test_crash_leaves_no_half_written_entry(tmp_path, monkeypatch):
    fx.make_folder(tmp_path / "f")
    real = cache_mod.decode_one
    calls = []

    def flaky(path, *a, **k):
        calls.append(path)
        if len(calls) == 5:
            raise RuntimeError("simulated crash")
        return real(path, *a, **k)
    monkeypatch.setattr(cache_mod, "decode_one", flaky)
    with pytest.raises(RuntimeError, match="simulated crash"):
        folder.folder(root=str(tmp_path / "f"), image_size=SIZE)
    assert entries(tmp_path) == []                         # neither an entry nor a .tmp folder
    monkeypatch.setattr(cache_mod, "decode_one", real)
    b = folder.folder(root=str(tmp_path / "f"), image_size=SIZE)
    assert not b.info["cache"]["hit"] and len(b.train) == 14
    assert [e for e in entries(tmp_path) if e.startswith(".tmp")] == []


def test_unreadable_images_warn_skip_or_error(tmp_path):
    fx.make_folder(tmp_path / "f")
    root = str(tmp_path / "f")
    bad = sorted((tmp_path / "f" / "train" / "sad").iterdir())[0]
    fx.truncate(bad)
    rel = bad.relative_to(tmp_path / "f").as_posix()
    with pytest.raises(SSLZooError) as e:                   # 1 of 21 > 1 %
        folder.folder(root=root, image_size=SIZE)
    assert rel in str(e.value) and "max_bad_fraction" in str(e.value) and "Expected layout" in str(e.value)
    assert entries(tmp_path) == []
    with pytest.raises(SSLZooError, match="on_bad_image=error"):
        folder.folder(root=root, image_size=SIZE, on_bad_image="error", max_bad_fraction=0.5)
    assert entries(tmp_path) == []
    with pytest.warns(UserWarning) as w:
        b = folder.folder(root=root, image_size=SIZE, max_bad_fraction=0.1)
    text = str(w[0].message)
    assert "skipped 1 of 21" in text and rel in text
    assert len(b.train) == 13 and b.skipped[0].startswith(rel + ": ")
    assert_paired(b.train)
    with pytest.warns(UserWarning, match="skipped 1 of 21"):   # a cache hit warns again
        again = folder.folder(root=root, image_size=SIZE, max_bad_fraction=0.1)
    assert again.info["cache"]["hit"] and again.skipped == b.skipped
    with pytest.raises(SSLZooError, match="on_bad_image=error"):   # ... and errors under 'error'
        folder.folder(root=root, image_size=SIZE, on_bad_image="error", max_bad_fraction=0.1)
    fx.garbage(sorted((tmp_path / "f" / "test" / "fear").iterdir())[0])
    with pytest.raises(SSLZooError, match="2 of 21"):
        folder.folder(root=root, image_size=SIZE, max_bad_fraction=0.05)


def test_decode_images_direct(tmp_path):
    gray = fx.write_image(tmp_path / "g.png", 2, (20, 10), gray=True)
    photo = fx.write_face_photo(tmp_path / "p.jpg", 4)
    junk = fx.garbage(tmp_path / "x.jpg")
    out, failures = cache_mod.decode_images([gray, photo, junk], 16,
                                            [None, fx.FACE_BOX, None], workers=2)
    assert out.shape == (3, 16, 16, 3) and out.dtype == np.uint8
    assert fx.label_of(out[0]) == 2 and fx.label_of(out[1]) == 4
    assert np.all(np.abs(out[1, 2:-2, 2:-2, 0].astype(int) - fx.class_value(4)) <= 8)   # cropped
    assert [i for i, _ in failures] == [2] and not out[2].any()


# --------------------------------------------------------------------------- describe

def test_describe_dataset(tmp_path):
    from sslzoo.data.describe import describe_dataset, format_description
    fx.make_affectnet(tmp_path / "an", train=2, val=1)
    d = describe_dataset("affectnet", str(tmp_path / "an"), image_size=SIZE, num_classes=7)
    json.dumps(d)
    assert d["splits"]["train"]["images"] == 14 and d["splits"]["test"]["per_class"]["fear"] == 1
    assert d["num_classes"] == 7 and d["image_size"] == SIZE
    assert d["label_mapping"]["7"] == "dropped" and d["skipped"] == []
    assert d["cache"]["dir"].startswith(str(tmp_path / "cache"))
    text = format_description(d)
    assert "happiness" in text and "labels.AFFECTNET" in text and "cache" in text
    assert "7 (FER7, the paper's order)" in text
    from sslzoo.data.describe import label_space
    from sslzoo.data.labels import FER8
    assert label_space(FER8) == "FER8, FER7 + contempt" and label_space(("0", "1")) == "the data set's own classes"
    with pytest.raises(SSLZooError, match="--data-root"):
        describe_dataset("affectnet", None)
