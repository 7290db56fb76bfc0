"""Tests for msutils.segmentation.nnunet (nnU-Net v2 bridge). One tiny dataset is exported, planned and
trained once per module (about a minute on 2 CPU cores)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from msutils.segmentation import nnunet as N

pytestmark = pytest.mark.xdist_group("nnunet")

SIZE = 64
DATASET_ID = 501
EPOCHS = 2
#: test_training_learns_the_lesions: training length and the training-slice Dice it must reach.
#: Measured (2 CPU cores under load): 2 x 10 iterations -> 0.94 (4 x 10 -> 0.91); the transposed
#: prediction scores 0.43, an empty one 0, the whole brain about 0.1.
LEARN_EPOCHS = 2
LEARN_ITERATIONS = 10
MIN_TRAINING_DICE = 0.7


def _slice(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[:SIZE, :SIZE]
    brain = ((yy - SIZE / 2) ** 2 / (0.42 * SIZE) ** 2 + (xx - SIZE / 2) ** 2 / (0.36 * SIZE) ** 2) < 1
    img = (0.4 + rng.normal(0, 0.03, (SIZE, SIZE))) * brain
    cy, cx = rng.uniform(SIZE / 2 - 8, SIZE / 2 + 8, 2)
    r = rng.uniform(4, 7)
    lesion = (((yy - cy) ** 2 + (xx - cx) ** 2) < r * r) & brain
    return np.where(lesion, 0.9, img).astype(np.float32), lesion.astype(np.uint8)


def _cases():
    """8 subjects x (1 slice + 1 augmented copy); 4 folds of 2 subjects."""
    rng = np.random.default_rng(0)
    cases, subjects = [], {}
    for s in range(8):
        img, mask = _slice(rng)
        scan = f"sub-{s:02d}_ses-01"
        cid, aid = N.make_case_id(scan, 5), N.make_case_id(scan, 5, copy=1)
        cases += [(cid, img, mask), (aid, np.flip(img, 0).copy(), np.flip(mask, 0).copy())]
        subjects[cid] = subjects[aid] = f"sub-{s:02d}"
    folds = [[f"sub-{2 * k:02d}", f"sub-{2 * k + 1:02d}"] for k in range(4)]
    return cases, subjects, folds


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    ws = N.NnUNetWorkspace(tmp_path_factory.mktemp("nnunet") / "ws")
    cases, subjects, folds = _cases()
    test_img, test_mask = _slice(np.random.default_rng(99))
    N.export_dataset(ws, DATASET_ID, "Toy", cases, [("test-01_s000", test_img, test_mask)], spacing=(1.0, 1.0))
    splits = N.splits_from_subject_folds(subjects, folds, exclude_from_val=[c for c in subjects if "_aug" in c])
    N.write_splits(ws, DATASET_ID, splits, case_subjects=subjects)
    plans = N.plan_and_preprocess(
        ws, DATASET_ID, n_stages=3, base_features=8, batch_size=4, num_processes=1, verify=False
    )
    log = N.train(ws, DATASET_ID, 0, num_epochs=EPOCHS, iterations_per_epoch=3, val_iterations=2, seed=0)
    return {"ws": ws, "cases": cases, "subjects": subjects, "folds": folds, "splits": splits, "plans": plans,
            "log": log}


# --------------------------------------------------------------------------- no torchvision / timm
def test_import_pulls_neither_torchvision_nor_timm():
    code = (
        "import sys\n"
        "import msutils.segmentation.nnunet\n"
        "bad = lambda: sorted(m for m in sys.modules if m.split('.')[0] in ('torchvision', 'timm'))\n"
        "assert not bad(), bad()\n"
        "assert 'nnunetv2' not in sys.modules and 'torch' not in sys.modules\n"
        # every nnunetv2 module msutils.segmentation.nnunet imports inside its functions
        "from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import (\n"
        "    DatasetFingerprintExtractor)\n"
        "from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner\n"
        "from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprint_dataset\n"
        "from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer\n"
        "from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor\n"
        "from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape\n"
        "from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels\n"
        "from nnunetv2.utilities.plans_handling.plans_handler import PlansManager\n"
        "from torch._dynamo import OptimizedModule\n"
        "assert not bad(), bad()\n"
        "print('clean')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == "clean"


def test_nnunet_reads_env_paths_lazily(tmp_path):
    import os

    import nnunetv2.paths as paths

    ws = N.NnUNetWorkspace(tmp_path / "w")
    before = os.environ.get("nnUNet_raw")
    with ws.activate(n_proc_da=0):
        assert os.fspath(paths.nnUNet_raw) == str(tmp_path / "w" / "nnUNet_raw")
        assert os.environ["nnUNet_n_proc_DA"] == "0"
    assert os.environ.get("nnUNet_raw") == before
    assert (tmp_path / "w" / "nnUNet_results").is_dir()


# --------------------------------------------------------------------------- export
def test_make_case_id():
    assert N.make_case_id("sub-01_ses-01", 7) == "sub-01_ses-01_s007"
    assert N.make_case_id("sub-01_ses-01", 7, copy=3) == "sub-01_ses-01_s007_aug3"
    assert N.make_case_id("sub 01/ses.1", 12) == "sub-01-ses-1_s012"
    with pytest.raises(ValueError, match="'index' must be a non-negative integer; got -1"):
        N.make_case_id("a", -1)


def test_export_layout_and_content(trained):
    import SimpleITK as sitk

    ws = trained["ws"]
    folder = ws.raw / "Dataset501_Toy"
    dj = json.loads((folder / "dataset.json").read_text())
    assert dj["channel_names"] == {"0": "FLAIR"}
    assert dj["labels"] == {"background": 0, "lesion": 1}
    assert dj["numTraining"] == 16 and dj["file_ending"] == ".nii.gz"
    assert dj["overwrite_image_reader_writer"] == "SimpleITKIO"
    assert len(list((folder / "imagesTr").glob("*_0000.nii.gz"))) == 16
    assert len(list((folder / "labelsTr").glob("*.nii.gz"))) == 16
    assert (folder / "imagesTs" / "test-01_s000_0000.nii.gz").is_file()
    assert (folder / "labelsTs" / "test-01_s000.nii.gz").is_file()
    case_id, img, mask = trained["cases"][3]
    back = sitk.ReadImage(str(folder / "imagesTr" / f"{case_id}_0000.nii.gz"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), img)
    assert back.GetSpacing() == (1.0, 1.0)
    lab = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "labelsTr" / f"{case_id}.nii.gz")))
    assert lab.dtype == np.uint8
    np.testing.assert_array_equal(lab, mask)
    meta = json.loads((folder / "msutils_export.json").read_text())
    assert meta["train_cases"] == [c[0] for c in trained["cases"]]
    assert meta["test_cases"] == ["test-01_s000"]
    assert len(meta["content_hash"]) == 64


def test_export_validation(tmp_path):
    ws = N.NnUNetWorkspace(tmp_path / "ws")
    img = np.zeros((8, 8), np.float32)
    img[2:6, 2:6] = 1
    ok = np.zeros((8, 8), np.uint8)
    with pytest.raises(ValueError, match=r"train case 'a_s000': mask values must be 0/1 .*got \[0, 2\]"):
        N.export_dataset(ws, 7, "X", [("a_s000", img, ok + 2 * (img > 0))])
    with pytest.raises(ValueError, match="train case id 'a_s000' appears twice"):
        N.export_dataset(ws, 7, "X", [("a_s000", img, ok), ("a_s000", img, ok)])
    with pytest.raises(ValueError, match="case id 'bad id' must start with a letter or digit"):
        N.export_dataset(ws, 7, "X", [("bad id", img, ok)])
    with pytest.raises(ValueError, match=r"mask shape \(8, 7\) does not match image shape \(8, 8\)"):
        N.export_dataset(ws, 7, "X", [("a_s000", img, ok[:, :7])])
    with pytest.raises(ValueError, match="'dataset_id' must be an integer in 1..999; got 1000"):
        N.export_dataset(ws, 1000, "X", [("a_s000", img, ok)])
    # a failed export leaves no dataset behind
    assert not any(p.name.startswith("Dataset007") for p in ws.raw.iterdir())
    N.export_dataset(ws, 7, "X", [("a_s000", img, ok)])
    with pytest.raises(FileExistsError, match="already holds Dataset007_X with id 7"):
        N.export_dataset(ws, 7, "Y", [("a_s000", img, ok)])
    with pytest.raises(FileExistsError, match="pass overwrite=True"):
        N.export_dataset(ws, 7, "X", [("a_s000", img, ok)], overwrite=False)


# --------------------------------------------------------------------------- splits
def test_splits_follow_study_folds(trained):
    ws, subjects = trained["ws"], trained["subjects"]
    written = json.loads((ws.preprocessed / "Dataset501_Toy" / "splits_final.json").read_text())
    assert written == trained["splits"] == N.read_splits(ws, DATASET_ID)
    assert len(written) == 4
    for k, fold in enumerate(written):
        val_subjects = set(trained["folds"][k])
        # validation = original slices of this fold's subjects only
        assert fold["val"] == [f"{s}_ses-01_s005" for s in sorted(val_subjects)]
        # training = originals + augmented copies of every other subject
        assert fold["train"] == sorted(c for c, s in subjects.items() if s not in val_subjects)
        assert len(fold["train"]) == 12
        assert not {subjects[c] for c in fold["train"]} & val_subjects


def test_write_splits_refuses_leaks_and_unknown_cases(trained):
    ws, subjects = trained["ws"], trained["subjects"]
    good = trained["splits"]
    leak = [{"train": good[0]["train"] + ["sub-00_ses-01_s005_aug1"], "val": good[0]["val"]}]
    with pytest.raises(ValueError, match=r"fold 0: subjects in both 'train' and 'val': \['sub-00'\]"):
        N.write_splits(ws, DATASET_ID, leak, case_subjects=subjects)
    with pytest.raises(ValueError, match=r"fold 0: 'val' case ids not in the exported dataset: \['nope'\]"):
        N.write_splits(ws, DATASET_ID, [{"train": good[0]["train"], "val": ["nope"]}])
    with pytest.raises(ValueError, match="subject 'sub-00' validates in folds 0 and 1"):
        N.splits_from_subject_folds(subjects, [["sub-00"], ["sub-00", "sub-01"]])
    # the stored file is unchanged by the refused calls
    assert N.read_splits(ws, DATASET_ID) == good


# --------------------------------------------------------------------------- planning
def test_plan_is_shrunk_and_data_preprocessed(trained):
    ws, plans = trained["ws"], trained["plans"]
    cfg = plans["configurations"]["2d"]
    arch = cfg["architecture"]["arch_kwargs"]
    assert arch["n_stages"] == 3
    assert arch["features_per_stage"] == [8, 16, 32]
    assert len(arch["strides"]) == len(arch["kernel_sizes"]) == len(arch["n_conv_per_stage"]) == 3
    assert len(arch["n_conv_per_stage_decoder"]) == 2
    assert cfg["batch_size"] == 4
    over = plans["msutils_overrides"]["2d"]
    assert over["n_stages"] == [4, 3] and over["features_per_stage"][1] == [8, 16, 32]
    assert over["batch_size"][1] == 4
    on_disk = json.loads((ws.preprocessed / "Dataset501_Toy" / "nnUNetPlans.json").read_text())
    assert on_disk["configurations"]["2d"] == cfg
    assert len(list((ws.preprocessed / "Dataset501_Toy" / "nnUNetPlans_2d").glob("*_seg.b2nd"))) == 16


def test_shrink_configuration_checks_divisibility():
    cfg = {
        "patch_size": [64, 64],
        "batch_size": 12,
        "architecture": {"arch_kwargs": {
            "n_stages": 4, "features_per_stage": [32, 64, 128, 256], "kernel_sizes": [[3, 3]] * 4,
            "strides": [[1, 1], [2, 2], [2, 2], [2, 2]], "n_conv_per_stage": [2] * 4,
            "n_conv_per_stage_decoder": [2] * 3,
        }},
    }
    with pytest.raises(ValueError, match=r"patch size \[60, 64\] must be divisible by \[8, 8\]"):
        N._shrink_configuration(json.loads(json.dumps(cfg)), patch_size=(60, 64), n_stages=None,
                                base_features=None, max_features=None, batch_size=None)
    ch = N._shrink_configuration(cfg, patch_size=(60, 64), n_stages=3, base_features=16, max_features=48,
                                 batch_size=None)
    assert cfg["architecture"]["arch_kwargs"]["features_per_stage"] == [16, 32, 48]
    assert ch["patch_size"] == [[64, 64], [60, 64]]
    with pytest.raises(ValueError, match=r"'n_stages' must be an integer in 2..3"):
        N._shrink_configuration(cfg, patch_size=None, n_stages=5, base_features=None, max_features=None,
                                batch_size=None)


# --------------------------------------------------------------------------- training
def test_training_log(trained):
    log = trained["log"]
    assert list(log.columns) == ["epoch", "train_loss", "val_loss", "pseudo_dice", "ema_pseudo_dice", "lr",
                                 "epoch_time_s"]
    assert log["epoch"].tolist() == list(range(EPOCHS))
    assert log["lr"].iloc[0] == pytest.approx(0.01)
    assert log["lr"].iloc[1] == pytest.approx(0.01 * (1 - 1 / EPOCHS) ** 0.9)  # nnU-Net's poly schedule
    assert np.isfinite(log[["train_loss", "val_loss"]].to_numpy()).all()
    assert ((log["pseudo_dice"] >= 0) & (log["pseudo_dice"] <= 1)).all()
    ws = trained["ws"]
    fold_dir = ws.model_folder(DATASET_ID) / "fold_0"
    assert fold_dir.parent.name == "nnUNetTrainer__nnUNetPlans__2d"
    assert (fold_dir / "checkpoint_final.pth").is_file()
    stored = N.training_log(ws, DATASET_ID, 0)
    np.testing.assert_allclose(stored.to_numpy(), log.to_numpy(), rtol=1e-6)


def test_training_is_reused_and_repeatable(trained):
    ws, log = trained["ws"], trained["log"]
    kw = dict(num_epochs=EPOCHS, iterations_per_epoch=3, val_iterations=2, seed=0)
    again = N.train(ws, DATASET_ID, 0, **kw)  # same settings -> reused, no training
    assert again[["train_loss", "val_loss"]].equals(log[["train_loss", "val_loss"]])
    # fold 1 twice from scratch with the same seed: identical losses (CPU, in-process augmentation)
    a = N.train(ws, DATASET_ID, 1, num_epochs=1, iterations_per_epoch=2, val_iterations=1, seed=3)
    b = N.train(ws, DATASET_ID, 1, num_epochs=1, iterations_per_epoch=2, val_iterations=1, seed=3, reuse=False)
    np.testing.assert_array_equal(a[["train_loss", "val_loss"]].to_numpy(), b[["train_loss", "val_loss"]].to_numpy())


def test_train_argument_errors(trained):
    ws = trained["ws"]
    with pytest.raises(ValueError, match=r"'fold' must be < 4 \(folds in splits_final.json\); got 4"):
        N.train(ws, DATASET_ID, 4, num_epochs=1, iterations_per_epoch=1, val_iterations=1)
    with pytest.raises(ValueError, match=r"'device' must be one of \['cpu', 'cuda'\]; got 'gpu'"):
        N.train(ws, DATASET_ID, 0, num_epochs=1, iterations_per_epoch=1, val_iterations=1, device="gpu")
    with pytest.raises(ValueError, match="'num_epochs' must be a positive integer; got 0"):
        N.train(ws, DATASET_ID, 0, num_epochs=0, iterations_per_epoch=1, val_iterations=1)


# --------------------------------------------------------------------------- prediction
def test_predict_matches_nnunet_predictor(trained):
    ws = trained["ws"]
    rng = np.random.default_rng(7)
    images = np.stack([_slice(rng)[0] for _ in range(3)] + [np.zeros((SIZE, SIZE), np.float32)])
    predictor = N.load_predictor(ws, DATASET_ID, 0)
    masks, probs = N.predict(ws, DATASET_ID, images, folds=0, return_probabilities=True, predictor=predictor)
    assert masks.shape == probs.shape == images.shape
    assert masks.dtype == np.uint8 and probs.dtype == np.float32
    assert set(np.unique(masks)) <= {0, 1}
    assert probs.min() >= 0 and probs.max() <= 1
    assert masks[3].sum() == 0 and probs[3].max() == 0  # empty slice: no brain, no prediction
    assert np.mean(masks[:3] == (probs[:3] > 0.5)) > 0.999
    # the same numbers as calling nnUNetPredictor directly, slice by slice
    for img, mask in zip(images[:3], masks[:3]):
        direct = predictor.predict_single_npy_array(img[None, None], {"spacing": [999.0, 1.0, 1.0]})
        np.testing.assert_array_equal(direct[0], mask)
    # single 2D slice in, 2D mask out; loading the weights inside predict gives the same result
    single = N.predict(ws, DATASET_ID, images[0])
    np.testing.assert_array_equal(single, masks[0])


def test_fold_ensemble_matches_nnunet_predictor(trained):
    ws = trained["ws"]
    # fold 1 as in test_training_is_reused_and_repeatable (reused when that test ran first)
    N.train(ws, DATASET_ID, 1, num_epochs=1, iterations_per_epoch=2, val_iterations=1, seed=3)
    images = np.stack([_slice(np.random.default_rng(s))[0] for s in (11, 12)])
    predictor = N.load_predictor(ws, DATASET_ID, (0, 1))
    assert len(predictor.list_of_parameters) == 2
    masks, probs = N.predict(ws, DATASET_ID, images, return_probabilities=True, predictor=predictor)
    for img, mask, prob in zip(images, masks, probs):
        seg, p = predictor.predict_single_npy_array(img[None, None], {"spacing": [999.0, 1.0, 1.0]}, None, None, True)
        np.testing.assert_array_equal(seg[0], mask)
        np.testing.assert_allclose(np.asarray(p[1, 0]), prob, atol=1e-6)
    fold0 = N.predict(ws, DATASET_ID, images, folds=0, return_probabilities=True)[1]
    assert not np.allclose(fold0, probs)  # the ensemble is not just fold 0


def test_predict_errors(trained):
    ws = trained["ws"]
    with pytest.raises(FileNotFoundError, match="fold_3/checkpoint_final.pth is missing: train fold 3 first"):
        N.load_predictor(ws, DATASET_ID, 3)
    with pytest.raises(ValueError, match=r"'images' must be a \(n, H, W\) or \(H, W\) array; got shape \(4,\)"):
        N.predict(ws, DATASET_ID, np.zeros(4))


def test_training_learns_the_lesions(trained):
    """A short run of the tiny configuration segments its training slices far better than chance."""
    from msutils.segmentation.metrics import dice

    ws = trained["ws"]
    log = N.train(ws, DATASET_ID, 3, num_epochs=LEARN_EPOCHS, iterations_per_epoch=LEARN_ITERATIONS,
                  val_iterations=1, seed=0)
    assert len(log) == LEARN_EPOCHS
    train_ids = set(trained["splits"][3]["train"])
    originals = [(img, mask) for cid, img, mask in trained["cases"] if cid in train_ids and "_aug" not in cid]
    assert len(originals) == 6
    images = np.stack([img for img, _ in originals])
    truth = np.stack([mask for _, mask in originals]).astype(bool)
    pred = N.predict(ws, DATASET_ID, images, folds=3).astype(bool)
    trained_dice = np.mean([dice(p, t) for p, t in zip(pred, truth)])
    empty_dice = np.mean([dice(np.zeros_like(t), t) for t in truth])
    transposed_dice = np.mean([dice(p.T, t) for p, t in zip(pred, truth)])
    assert empty_dice == 0.0
    assert trained_dice >= MIN_TRAINING_DICE, (trained_dice, transposed_dice)
    assert trained_dice >= transposed_dice + 0.3, (trained_dice, transposed_dice)
