"""flaxcnn.datasets.folder: image folders built from the bundled Fashion-MNIST sample as real PNG and
JPEG files (grey, RGB, RGBA, palette; mixed sizes), read into arrays, cached, and refused when bad."""
import os

import numpy as np
import pytest
from PIL import Image

from flaxcnn.datasets import DataError
from flaxcnn.datasets import catalog, folder
from image_folders import CLASSES, make_folder, sample_images, write_image

STORE = 28


@pytest.fixture(scope="module")
def sample():
    """{label: [28x28 uint8 images]} for the three classes, 8 train and 3 test images each."""
    return sample_images()


@pytest.fixture(scope="module")
def mixed(tmp_path_factory, sample):
    return make_folder(tmp_path_factory.mktemp("mixed") / "pictures", sample)


def count_opens(monkeypatch):
    calls = []
    original = Image.open

    def counting(*args, **kwargs):
        calls.append(args[0])
        return original(*args, **kwargs)

    monkeypatch.setattr(Image, "open", counting)
    return calls


def test_a_mixed_folder_becomes_sorted_classes_and_uint8_rgb_squares(mixed, sample, tmp_path):
    data = folder.load_folder(str(mixed), data_dir=str(tmp_path), store_size=STORE)
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
    data = folder.load_folder(str(mixed), data_dir=str(tmp_path), store_size=256)
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
    data = folder.load_folder(str(root), data_dir=str(tmp_path / "cache"), store_size=16)
    assert data.test_split == "valid" and data.channels == 1
    assert data.image_shape == (16, 16, 1) and len(data.test_labels) == 9
    assert f"decoding {root}" in capsys.readouterr().err
    folder.load_folder(str(root), data_dir=str(tmp_path / "cache2"), store_size=16,
                       progress=False)
    assert "decoding" not in capsys.readouterr().err


def test_a_stored_image_has_its_shorter_side_resized_and_the_centre_square_cut():
    pixels = np.arange(20 * 40, dtype=np.uint16).reshape(20, 40) % 251
    wide = Image.fromarray(pixels.astype(np.uint8), "L")
    np.testing.assert_array_equal(folder.fit_image(wide, 20, 20)[..., 0], pixels[:, 10:30])
    np.testing.assert_array_equal(folder.fit_image(wide.transpose(Image.Transpose.TRANSPOSE),
                                                   20, 20)[..., 0], pixels[:, 10:30].T)
    # Shorter side 20 -> 10, longer 40 -> 20 (Pillow's bilinear), then the centre 10 x 10.
    halved = np.asarray(wide.resize((20, 10), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(folder.fit_image(wide, 10, 10)[..., 0], halved[:, 5:15])
    colour = folder.fit_image(wide, 10, 10, channels=3)
    assert colour.shape == (10, 10, 3) and (colour == colour[..., :1]).all()


def test_the_second_run_reads_the_cache_without_decoding(mixed, tmp_path, monkeypatch):
    first = folder.load_folder(str(mixed), data_dir=str(tmp_path), store_size=STORE)
    opens = count_opens(monkeypatch)
    again = folder.load_folder(str(mixed), data_dir=str(tmp_path), store_size=STORE)
    assert opens == []
    for name in ("train_images", "train_labels", "test_images", "test_labels"):
        np.testing.assert_array_equal(getattr(again, name), getattr(first, name))
    assert again.class_names == first.class_names
    # Another store size is another cache; so is a changed file.
    folder.load_folder(str(mixed), data_dir=str(tmp_path), store_size=STORE + 4)
    assert len(opens) == 2 * 33  # each of the 33 files: its header (the stored side), its pixels
    touched = mixed / "test" / "Bag" / os.listdir(mixed / "test" / "Bag")[0]
    os.utime(touched, ns=(1, 1))
    folder.load_folder(str(mixed), data_dir=str(tmp_path), store_size=STORE)
    assert len(opens) == 4 * 33
    assert len(os.listdir(tmp_path / folder.CACHE_SUBDIR)) == 3  # no temporary files left


@pytest.mark.parametrize("damage", ["truncate", "flip_byte", "garbage"])
def test_a_damaged_cache_is_rebuilt_not_trusted(mixed, tmp_path, monkeypatch, capsys, damage):
    good = folder.load_folder(str(mixed), data_dir=str(tmp_path), store_size=STORE)
    (cache,) = (tmp_path / folder.CACHE_SUBDIR).iterdir()
    raw = bytearray(cache.read_bytes())
    if damage == "truncate":
        raw = raw[: len(raw) // 2]
    elif damage == "flip_byte":
        raw[len(raw) // 2] ^= 0xFF  # inside the train images' data
    else:
        raw = bytearray(b"not a zip file")
    cache.write_bytes(bytes(raw))
    opens = count_opens(monkeypatch)
    rebuilt = folder.load_folder(str(mixed), data_dir=str(tmp_path), store_size=STORE)
    assert len(opens) == 2 * 33
    assert f"the folder cache {cache} is damaged" in capsys.readouterr().err
    np.testing.assert_array_equal(rebuilt.train_images, good.train_images)
    opens.clear()
    folder.load_folder(str(mixed), data_dir=str(tmp_path), store_size=STORE)  # repaired
    assert opens == []


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
        folder.load_folder(str(root), data_dir=str(tmp_path), store_size=8)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(BAD_FOLDERS[case].format(root=root)), message
    assert not (tmp_path / folder.CACHE_SUBDIR).exists()  # nothing cached from a bad folder


def test_skip_bad_skips_counts_and_warns(tmp_path, sample, capsys):
    root = make_folder(tmp_path / "skip", sample, kinds=["grey.png", "rgb.png", "rgb.jpg"],
                       per_class=(3, 1))
    break_folder(root, "not_an_image")
    break_folder(root, "truncated_jpeg")
    data = folder.load_folder(str(root), data_dir=str(tmp_path), store_size=8, skip_bad=True)
    assert data.skipped == ("train/Bag/notes.txt", "train/Sneaker/02.jpg")
    np.testing.assert_array_equal(data.train_labels, [0, 0, 0, 1, 1, 2, 2, 2])
    assert "skipped 2 unreadable file(s)" in capsys.readouterr().err
    folder.load_folder(str(root), data_dir=str(tmp_path), store_size=8, skip_bad=True)
    assert "skipped 2 unreadable file(s)" in capsys.readouterr().err  # from the cache too
    # A class left without any readable image is still refused.
    for name in os.listdir(root / "test" / "Bag"):
        (root / "test" / "Bag" / name).write_bytes(b"broken")
    with pytest.raises(DataError, match=r"test/Bag holds no readable image"):
        folder.load_folder(str(root), data_dir=str(tmp_path), store_size=8, skip_bad=True)


def test_folder_names_parse_and_an_empty_path_is_refused():
    assert catalog.folder_path("fashion_mnist") is None
    assert catalog.folder_path("folder:~/photos") == os.path.expanduser("~/photos")
    assert catalog.folder_path("folder:rel") == os.path.abspath("rel")
    with pytest.raises(DataError, match="no folder given"):
        catalog.folder_path("folder: ")
    with pytest.raises(DataError, match="does not exist"):
        folder.load_folder("/nonexistent/pictures", data_dir="/tmp")
