"""user_data_lib's folder patterns, splits and mask rules (fast, no dataset written).

The end-to-end import tests (every format, bad inputs, real data) are in
tests/test_import_data.py.
"""

import numpy as np
import pytest

from tf_prob_unet import import_lib

LIB = import_lib.lib_module()


def test_placeholder_spans_components_and_star_stays_inside_one():
  p = LIB.Pattern("{case}/image_*.jpg", "--image")
  assert p.match("training/case_01/image_a.jpg") == {"case": "training/case_01"}
  assert p.match("c1/image_.jpg") == {"case": "c1"}
  assert p.match("c1/x/image_a.jpg") == {"case": "c1/x"}
  assert p.match("c1/image_a/b.jpg") is None  # `*` does not cross "/".
  assert p.match("c1/image_a.png") is None
  q = LIB.Pattern("{patient}/mask-*/{slice}.png", "--masks")
  assert q.match("p1/mask-0/s-3.png") == {"patient": "p1", "slice": "s-3"}
  assert q.match("p1/images/s-3.png") is None


def test_part_of_a_file_name_and_a_repeated_placeholder():
  p = LIB.Pattern("{case}_seg{rater}.nii.gz", "--masks")
  assert p.match("a/p01_seg2.nii.gz") == {"case": "a/p01", "rater": "2"}
  r = LIB.Pattern("{case}/{case}_img.png", "--image")
  assert r.match("p1/p1_img.png") == {"case": "p1"}
  assert r.match("p1/p2_img.png") is None
  with pytest.raises(LIB.ImportError_, match=r"--image: expected placeholders like \{case\}"):
    LIB.Pattern("{1x}/a.png", "--image")


def test_match_folder_keys_rater_order_and_errors(tmp_path):
  for case in ("b", "a"):
    for name in ("image.png", "label_2.png", "label_1.png"):
      (tmp_path / case).mkdir(exist_ok=True)
      (tmp_path / case / name).write_bytes(b"")
  cases = LIB.match_folder(str(tmp_path), "{case}/image.png", "{case}/label_*.png")
  assert [c[0] for c in cases] == ["a", "b"]
  assert [m.rsplit("/", 1)[1] for m in cases[0][2]] == ["label_1.png", "label_2.png"]
  with pytest.raises(LIB.ImportError_, match=r"--masks: expected the placeholders"):
    LIB.match_folder(str(tmp_path), "{case}/image.png", "{other}/label_*.png")
  (tmp_path / "c").mkdir()
  (tmp_path / "c" / "label_1.png").write_bytes(b"")
  with pytest.raises(LIB.ImportError_, match=r"c/label_1.png: expected an image .* 'c'"):
    LIB.match_folder(str(tmp_path), "{case}/image.png", "{case}/label_*.png")


def test_split_words_and_group_regex():
  opts = LIB.ImportOptions(source=".", split_from_path=True)
  assert LIB.split_of(opts, "Training/p1/s1", "p1") == "train"
  assert LIB.split_of(opts, "x/val/p1", "p1") == "validation"
  assert LIB.split_of(opts, "testing/p1", "p1") == "test"
  with pytest.raises(LIB.ImportError_, match="exactly one path component"):
    LIB.split_of(opts, "train/test/p1", "p1")
  with pytest.raises(LIB.ImportError_, match="exactly one path component"):
    LIB.split_of(opts, "p1/s1", "p1")
  hashed = LIB.ImportOptions(source=".", group=r"^(p\d+)_")
  assert LIB._group(hashed, "p12_s3") == "p12"  # pylint: disable=protected-access
  with pytest.raises(LIB.ImportError_, match=r"case 'x': expected a match of --group"):
    LIB._group(hashed, "x")  # pylint: disable=protected-access


def test_mask_rules():
  rule = LIB.MaskRule("class_values", class_values=(0, 128, 255))
  np.testing.assert_array_equal(rule.apply(np.array([[0, 128, 255]]), "m"), [[0, 1, 2]])
  with pytest.raises(LIB.ImportError_, match=r"m: expected mask values in --class_values"):
    rule.apply(np.array([[0, 7]]), "m")
  threshold = LIB.MaskRule("threshold", threshold=128)
  np.testing.assert_array_equal(threshold.apply(np.array([[3, 127, 128, 250]]), "m"),
                                [[0, 0, 1, 1]])
  np.testing.assert_array_equal(LIB.raw_mask(np.array([[0.2, 0.7]]), "m"), [[0, 1]])
  with pytest.raises(LIB.ImportError_, match="expected a grey-scale mask"):
    LIB.raw_mask(np.stack([np.zeros((2, 2)), np.ones((2, 2)), np.zeros((2, 2))], -1), "m")
