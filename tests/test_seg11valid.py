"""`kfcn prepare --scheme seg11valid`: the FCN paper's validation set, shipped with kfcn."""

import re

from kfcn.data.sources import IdLists, seg11valid_ids, split_ids


def test_shipped_list_is_736_voc_ids():
    ids = seg11valid_ids()
    assert len(ids) == len(set(ids)) == 736
    assert all(re.fullmatch(r"20(0[7-9]|1[01])_\d{6}", i) for i in ids)
    assert ids[:2] == ["2007_000033", "2007_000042"] and ids[-1] == "2011_003271"


def test_shipped_list_is_the_published_one(real_data):
    published = (real_data / "splits" / "seg11valid.txt").read_text().split()
    assert seg11valid_ids() == published


def test_scheme_validates_on_seg11valid_with_voc_labels_and_trains_on_sbd_train():
    sbd_train = ("2008_000003", "2008_000001", "2011_000002")
    lists = IdLists(
        sbd_train=sbd_train,
        sbd_val=("2009_000001",),
        voc_train=("2007_000010",),
        voc_val=("2007_000033",),
        voc_trainval=("2007_000010", "2007_000033"),
    )
    splits = split_ids(lists, "seg11valid")
    assert splits["val"] == [(i, "voc") for i in seg11valid_ids()]
    assert splits["train"] == [(i, "sbd") for i in sorted(sbd_train)]
