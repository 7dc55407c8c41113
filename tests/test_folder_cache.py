"""flaxcnn.datasets.folder_cache: image folders built from the bundled Fashion-MNIST sample as real
PNG and JPEG files (grey, RGB, RGBA, palette; mixed sizes), decoded into the memory-mapped cache,
read back without decoding, refused when bad; a killed decode resumes, too little disk is one line
before any decoding, a bad file deep in a folder larger than one batch of decodes is found."""
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from flaxcnn.datasets import DataError
from flaxcnn.datasets import folder, folder_cache
from image_folders import make_folder, sample_images
from tests.conftest import REPO

STORE = 28


@pytest.fixture(scope="module")
def sample():
    """{label: [28x28 uint8 images]} for the three classes, the first 33 of each."""
    return sample_images(per_class=33)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory, sample):
    return make_folder(tmp_path_factory.mktemp("mixed") / "pictures", sample)


@pytest.fixture(scope="module")
def big(tmp_path_factory, sample):
    """90 training and 9 test PNG files: more than one batch of decodes (48 on 2 cores)."""
    return make_folder(tmp_path_factory.mktemp("big") / "pictures", sample,
                       kinds=["grey.png", "rgb.png"], per_class=(30, 3))


def count_opens(monkeypatch):
    calls = []
    original = Image.open

    def counting(*args, **kwargs):
        calls.append(args[0])
        return original(*args, **kwargs)

    monkeypatch.setattr(Image, "open", counting)
    return calls


def count_decodes(monkeypatch):
    calls = []
    original = folder.decode_file

    def counting(path, *args, **kwargs):
        calls.append(path)
        return original(path, *args, **kwargs)

    monkeypatch.setattr(folder, "decode_file", counting)
    return calls


def test_a_mixed_folder_becomes_sorted_classes_and_uint8_rgb_squares(mixed, sample, tmp_path):
    data = folder_cache.load_folder(str(mixed), data_dir=str(tmp_path), store_size=STORE)
    assert data.class_names == ("Bag", "Sneaker", "Trouser")
    assert data.test_split == "test" and data.skipped == ()
    assert data.train_images.shape == (24, STORE, STORE, 3) and data.train_images.dtype == np.uint8
    assert data.test_images.shape == (9, STORE, STORE, 3)
    assert data.train_labels.dtype == np.int32
    np.testing.assert_array_equal(data.train_labels, np.repeat([0, 1, 2], 8))
    np.testing.assert_array_equal(data.test_labels, np.repeat([0, 1, 2], 3))
    # Lossless files come back exactly: train/Bag/00 is a grey PNG (three equal channels in a
    # colour set), 01 an RGB PNG, 04 a palette PNG, 05 RGBA (alpha dropped), 06 a 42 x 28 PNG
    # (its centre square); the JPEGs (02 RGB, 03 grey) nearly.
    bag = [np.stack([pixels, pixels // 2, pixels], -1) for pixels in sample[8]]
    np.testing.assert_array_equal(data.train_images[0], np.repeat(sample[8][0][..., None], 3, -1))
    for i in (1, 4, 5):
        np.testing.assert_array_equal(data.train_images[i], bag[i])
    wide = np.asarray(Image.fromarray(bag[6], "RGB").resize((42, 28)))
    np.testing.assert_array_equal(data.train_images[6], wide[:, 7:35])
    assert np.abs(data.train_images[2].astype(int) - bag[2]).mean() < 10
    grey_jpeg = np.abs(data.train_images[3].astype(int) - sample[8][3][..., None]).mean()
    assert grey_jpeg < 8


def test_images_are_kept_at_their_typical_shorter_side_never_larger(mixed, tmp_path):
    # The folder's images are 28 pixels on their shorter side (28x28, 42x28, 28x50): a store size
    # of 256 keeps them at 28, not upscaled 9 times.
    data = folder_cache.load_folder(str(mixed), data_dir=str(tmp_path), store_size=256)
    assert data.train_images.shape == (24, 28, 28, 3) and data.test_images.shape == (9, 28, 28, 3)
    photos = []
    for i, (width, height) in enumerate([(300, 200), (120, 90), (640, 480)]):
        photos.append(str(tmp_path / f"{i}.png"))
        Image.new("RGB", (width, height)).save(photos[-1])
    assert folder.stored_side(photos, 256) == 200  # the median shorter side
    assert folder.stored_side(photos, 64) == 64  # the store size, where it is smaller


def test_a_grey_folder_with_valid_split_has_one_channel_and_a_progress_bar(tmp_path, sample,
                                                                           monkeypatch, capsys):
    root = make_folder(tmp_path / "grey", sample, kinds=["grey.png", "grey.jpg", "tall.jpg"],
                       eval_split="valid")
    monkeypatch.setattr(folder, "PROGRESS_FROM", 33)  # this folder's size
    data = folder_cache.load_folder(str(root), data_dir=str(tmp_path / "cache"), store_size=16)
    assert data.test_split == "valid" and data.channels == 1
    assert data.image_shape == (16, 16, 1) and len(data.test_labels) == 9
    assert f"decoding {root}" in capsys.readouterr().err
    folder_cache.load_folder(str(root), data_dir=str(tmp_path / "cache2"), store_size=16,
                       progress=False)
    assert "decoding" not in capsys.readouterr().err


def test_the_second_run_reads_the_cache_without_decoding(mixed, tmp_path, monkeypatch):
    first = folder_cache.load_folder(str(mixed), data_dir=str(tmp_path), store_size=STORE)
    assert isinstance(first.train_images, np.memmap)  # mapped from the disk, not loaded
    opens = count_opens(monkeypatch)
    again = folder_cache.load_folder(str(mixed), data_dir=str(tmp_path), store_size=STORE)
    assert opens == []
    for name in ("train_images", "train_labels", "test_images", "test_labels"):
        np.testing.assert_array_equal(getattr(again, name), getattr(first, name))
    assert again.class_names == first.class_names
    # Another store size is another cache; so is a changed file.
    decodes = count_decodes(monkeypatch)
    folder_cache.load_folder(str(mixed), data_dir=str(tmp_path), store_size=STORE + 4)
    assert len(decodes) == 33
    touched = mixed / "test" / "Bag" / os.listdir(mixed / "test" / "Bag")[0]
    os.utime(touched, ns=(1, 1))
    folder_cache.load_folder(str(mixed), data_dir=str(tmp_path), store_size=STORE)
    assert len(decodes) == 66
    caches = sorted((tmp_path / folder_cache.CACHE_SUBDIR).iterdir())
    assert len(caches) == 3
    for cache in caches:  # each complete, nothing temporary left
        assert sorted(os.listdir(cache)) == ["complete.json", "decoded.npy", "test_images.npy",
                                             "test_labels.npy", "train_images.npy",
                                             "train_labels.npy"]


DAMAGE = {
    "truncated_images": lambda cache: (cache / "train_images.npy").write_bytes(
        (cache / "train_images.npy").read_bytes()[:1000]),
    "garbage_marker": lambda cache: (cache / "complete.json").write_text("{not json"),
    "labels_out_of_range": lambda cache: np.save(cache / "test_labels.npy",
                                                 np.full(9, 7, np.int32)),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_cache_is_rebuilt_not_trusted(mixed, tmp_path, monkeypatch, capsys, damage):
    good = folder_cache.load_folder(str(mixed), data_dir=str(tmp_path), store_size=STORE)
    good_images = np.array(good.train_images)
    (cache,) = (tmp_path / folder_cache.CACHE_SUBDIR).iterdir()
    del good
    DAMAGE[damage](cache)
    decodes = count_decodes(monkeypatch)
    rebuilt = folder_cache.load_folder(str(mixed), data_dir=str(tmp_path), store_size=STORE)
    assert len(decodes) == 33
    assert f"the folder cache {cache} is damaged" in capsys.readouterr().err
    np.testing.assert_array_equal(rebuilt.train_images, good_images)
    decodes.clear()
    folder_cache.load_folder(str(mixed), data_dir=str(tmp_path), store_size=STORE)  # repaired
    assert decodes == []


def break_folder(root, case):
    if case == "no_train":
        os.rename(root / "train", root / "training")
    elif case == "no_test":
        os.rename(root / "test", root / "testing")
    elif case == "class_only_in_train":
        os.rename(root / "test" / "Bag", root / "test" / "Bags")
    elif case == "empty_class":
        for name in os.listdir(root / "train" / "Bag"):
            os.remove(root / "train" / "Bag" / name)
    elif case == "not_an_image":
        (root / "train" / "Bag" / "notes.txt").write_text("my notes")
    elif case == "truncated_jpeg":
        path = root / "train" / "Sneaker" / "02.jpg"
        path.write_bytes(path.read_bytes()[:200])
    elif case == "truncated_png":
        path = root / "test" / "Trouser" / "00.png"
        path.write_bytes(path.read_bytes()[:120])


BAD_FOLDERS = {
    "no_train": "no train/ folder in {root}: a folder dataset needs {root}/train/<class>",
    "no_test": "no test/ or valid/ folder in {root}",
    "class_only_in_train": "the class folder 'Bag' is in {root}/train but not in {root}/test",
    "empty_class": "the class folder {root}/train/Bag holds no files",
    "not_an_image": "{root}/train/Bag/notes.txt is not an image Pillow can read",
    "truncated_jpeg": "{root}/train/Sneaker/02.jpg is not an image Pillow can read, or is damaged",
    "truncated_png": "{root}/test/Trouser/00.png is not an image Pillow can read, or is damaged",
}


@pytest.mark.parametrize("case", sorted(BAD_FOLDERS))
def test_a_bad_folder_is_one_line_naming_the_problem(tmp_path, sample, case):
    root = make_folder(tmp_path / "bad", sample, kinds=["grey.png", "rgb.png", "rgb.jpg"],
                       per_class=(3, 1))
    break_folder(root, case)
    with pytest.raises(DataError) as error:
        folder_cache.load_folder(str(root), data_dir=str(tmp_path), store_size=8)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(BAD_FOLDERS[case].format(root=root)), message
    # nothing cached from a bad folder, not even a partial decode
    assert not any((tmp_path / folder_cache.CACHE_SUBDIR).glob("*/*"))


def test_skip_bad_skips_counts_and_warns(tmp_path, sample, capsys):
    root = make_folder(tmp_path / "skip", sample, kinds=["grey.png", "rgb.png", "rgb.jpg"],
                       per_class=(3, 1))
    break_folder(root, "not_an_image")
    break_folder(root, "truncated_jpeg")
    data = folder_cache.load_folder(str(root), data_dir=str(tmp_path), store_size=8, skip_bad=True)
    assert data.skipped == ("train/Bag/notes.txt", "train/Sneaker/02.jpg")
    np.testing.assert_array_equal(data.train_labels, [0, 0, 0, 1, 1, 2, 2, 2])
    assert "skipped 2 unreadable file(s)" in capsys.readouterr().err
    folder_cache.load_folder(str(root), data_dir=str(tmp_path), store_size=8, skip_bad=True)
    assert "skipped 2 unreadable file(s)" in capsys.readouterr().err  # from the cache too
    # A class left without any readable image is still refused.
    for name in os.listdir(root / "test" / "Bag"):
        (root / "test" / "Bag" / name).write_bytes(b"broken")
    with pytest.raises(DataError, match=r"test/Bag holds no readable image"):
        folder_cache.load_folder(str(root), data_dir=str(tmp_path), store_size=8, skip_bad=True)


KILLED_DECODE = r"""
import os, signal, sys
from flaxcnn.datasets import folder, folder_cache
decode, calls = folder.decode_file, []

def decode_then_die(path, *args, **kwargs):
    calls.append(path)
    if len(calls) == 60:  # after the first batch of 48 rows was written
        os.kill(os.getpid(), signal.SIGKILL)
    return decode(path, *args, **kwargs)

folder.decode_file = decode_then_die
folder_cache.load_folder(sys.argv[1], data_dir=sys.argv[2], store_size=16)
"""


def test_a_killed_decode_leaves_no_complete_cache_and_resumes(big, tmp_path, monkeypatch):
    killed = subprocess.run([sys.executable, "-c", KILLED_DECODE, str(big), str(tmp_path / "a")],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    (cache,) = (tmp_path / "a" / folder_cache.CACHE_SUBDIR).iterdir()
    assert not (cache / folder_cache.COMPLETE).exists()
    decodes = count_decodes(monkeypatch)
    resumed = folder_cache.load_folder(str(big), data_dir=str(tmp_path / "a"), store_size=16)
    assert 0 < len(decodes) <= 99 - 48  # only what the killed decode had not written
    decodes.clear()
    fresh = folder_cache.load_folder(str(big), data_dir=str(tmp_path / "b"), store_size=16)
    assert len(decodes) == 99
    for name in ("train_images", "train_labels", "test_images", "test_labels"):
        np.testing.assert_array_equal(getattr(resumed, name), getattr(fresh, name))


def test_too_little_disk_is_one_line_before_any_decoding(big, tmp_path, monkeypatch):
    free = folder_cache.disk_needed(99, 16, 3) - 1
    monkeypatch.setattr(folder_cache.shutil, "disk_usage",
                        lambda path: type("Usage", (), {"free": free})())
    decodes = count_decodes(monkeypatch)
    with pytest.raises(DataError) as error:
        folder_cache.load_folder(str(big), data_dir=str(tmp_path), store_size=16)
    message = str(error.value)
    assert "\n" not in message and decodes == []
    assert message.startswith(f"decoding {big} (99 images of 16x16x3) needs 0.00 GiB of disk"), \
        message
    assert "point --config.data_dir at a disk with room" in message
    assert not any((tmp_path / folder_cache.CACHE_SUBDIR).glob("*"))


def test_a_bad_file_deep_in_a_big_folder_is_one_line_or_skipped(big, tmp_path, sample):
    root = tmp_path / "pictures"
    shutil.copytree(big, root)
    bad = root / "train" / "Trouser" / "27.png"  # decoded in the second batch
    bad.write_bytes(bad.read_bytes()[:120])
    with pytest.raises(DataError) as error:
        folder_cache.load_folder(str(root), data_dir=str(tmp_path / "cache"), store_size=16)
    assert str(error.value).startswith(f"{bad} is not an image Pillow can read, or is damaged")
    assert not any((tmp_path / "cache" / folder_cache.CACHE_SUBDIR).glob("*/*"))
    data = folder_cache.load_folder(str(root), data_dir=str(tmp_path / "cache"), store_size=16,
                                    skip_bad=True)
    assert data.skipped == ("train/Trouser/27.png",) and len(data.train_labels) == 89
    whole = folder_cache.load_folder(str(big), data_dir=str(tmp_path / "cache"), store_size=16)
    keep = np.delete(np.arange(90), 87)  # Bag 0-29, Sneaker 30-59, Trouser 60-89
    np.testing.assert_array_equal(data.train_images, whole.train_images[keep])
    np.testing.assert_array_equal(data.train_labels, whole.train_labels[keep])
