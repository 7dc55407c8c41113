"""flaxcnn.datasets.folder: how a stored image is fitted, and folder names. Reading whole folders
(decoded into the cache, refused when bad) is tests/test_folder_cache.py's."""
import os

import numpy as np
import pytest
from PIL import Image

from flaxcnn.datasets import DataError
from flaxcnn.datasets import catalog, folder


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


def test_folder_names_parse_and_a_missing_folder_is_refused():
    assert catalog.folder_path("fashion_mnist") is None
    assert catalog.folder_path("folder:~/photos") == os.path.expanduser("~/photos")
    assert catalog.folder_path("folder:rel") == os.path.abspath("rel")
    with pytest.raises(DataError, match="no folder given"):
        catalog.folder_path("folder: ")
    with pytest.raises(DataError, match="does not exist"):
        folder.list_folder("/nonexistent/pictures")
