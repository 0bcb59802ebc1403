"""`segkit kernel build` and `push-folds`: the kaggle: config schema, the metadata (with the client's rules),
and the single-file bundle (package + resolved config, no secrets, reproducible)."""
import ast
import base64
import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

import segkit
from fake_kaggle import FAKE_USER, fake_kaggle, kaggle_env  # noqa: F401  (fixtures)
from segkit.cli import main
from segkit.config import config_from_dict
from segkit.errors import ConfigError, KaggleError
from segkit.kaggle.bundle import build_kernel, parse_folds
from segkit.kaggle.config import adapter_for, adapter_name_for, kaggle_config
from segkit.kaggle.metadata import validate_metadata

KAGGLE = {"owner": "someone", "title": "Cloud Net Folds", "competition": "some-seg-comp",
          "dataset_sources": ["sorour/38cloud-cloud-segmentation-in-satellite-images"],
          "machine_shape": "NvidiaTeslaT4"}


def make_cfg(**kaggle):
    return config_from_dict({"name": "c38", "train": {"folds": 3}, "kaggle": {**KAGGLE, **kaggle}})


def script_constants(path: Path) -> dict:
    """The module-level constants of a built script, read without running it."""
    tree = ast.parse(path.read_text())
    out = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
            if name in ("KIND", "FOLD", "SEGKIT_BUNDLE"):
                out[name] = ast.literal_eval(node.value)
            elif name == "SEGKIT_CONFIG":
                out[name] = json.loads(ast.literal_eval(node.value.args[0]))
    return out


# --- config ----------------------------------------------------------------------------------

def test_unknown_kaggle_key_names_the_closest_one():
    with pytest.raises(ConfigError, match=r"kaggle.enable_internt: unknown config key; did you mean 'kaggle.enable_internet'"):
        kaggle_config(make_cfg(enable_internt=True))


@pytest.mark.parametrize("kaggle, message", [
    ({"slug": "abc"}, "kaggle.slug: 'abc' must be at least 5 characters"),
    ({"slug": "Has_Caps"}, "kaggle.slug"),
    ({"title": "abc"}, "kaggle.title: 'abc' must be at least 5"),
    ({"enable_gpu": False}, "NvidiaTeslaT4 is a GPU; set kaggle.enable_gpu: true"),
    ({"code_competition": True, "enable_internet": True}, "code competitions require kernels without internet"),
    ({"dataset_sources": ["just-a-slug"]}, "kaggle.dataset_sources: 'just-a-slug' must look like owner/dataset-slug"),
    ({"kernel_sources": ["me/abc"]}, "a kernel slug needs at least 5 characters"),
    ({"model_sources": ["me/m/keras/v/latest"]}, "must be a version number"),
    ({"enable_gpu": "yes"}, "kaggle.enable_gpu: expected true or false"),
    ({"docker_image_pinning_type": "newest"}, "must be 'original' or 'latest'"),
])
def test_bad_kaggle_values_are_refused(kaggle, message):
    with pytest.raises(ConfigError, match=message):
        kaggle_config(make_cfg(**kaggle))


def test_competition_slug_maps_to_its_format():
    assert adapter_for is adapter_name_for  # the older name still works
    assert adapter_name_for("carvana-image-masking-challenge") == "carvana"
    assert adapter_name_for("airbus-ship-detection") == "airbus"
    assert adapter_name_for("anything", fmt="cloud38") == "cloud38"
    assert adapter_name_for("some-seg-comp", cfg=make_cfg()) == "cloud38"
    assert adapter_name_for("cloud38") == "cloud38"
    with pytest.raises(ConfigError, match="pass --format"):
        adapter_name_for("unknown-comp")


# --- build -----------------------------------------------------------------------------------

def test_build_writes_metadata_from_the_config(tmp_path):
    built = build_kernel(make_cfg(), "cloud-net-folds-fold2", "train", 2, tmp_path)
    meta = json.loads((tmp_path / "cloud-net-folds-fold2" / "kernel-metadata.json").read_text())
    assert meta == built.metadata
    assert meta["id"] == "someone/cloud-net-folds-fold2"
    assert meta["title"] == "Cloud Net Folds fold2"
    assert meta["code_file"] == "train.py" and (built.folder / "train.py").is_file()
    assert meta["language"] == "python" and meta["kernel_type"] == "script"
    assert meta["enable_internet"] is False and meta["enable_gpu"] is True and meta["is_private"] is True
    assert meta["machine_shape"] == "NvidiaTeslaT4"
    assert meta["competition_sources"] == ["some-seg-comp"]
    assert meta["dataset_sources"] == KAGGLE["dataset_sources"]
    assert built.warnings == []  # the title slugifies to the id


def test_built_script_embeds_the_package_and_the_resolved_config(tmp_path):
    cfg = make_cfg()
    built = build_kernel(cfg, "cloud-net-folds-fold1", "train", 1, tmp_path)
    compile(built.code_file.read_text(), str(built.code_file), "exec")
    consts = script_constants(built.code_file)
    assert consts["KIND"] == "train" and consts["FOLD"] == 1
    assert consts["SEGKIT_CONFIG"] == json.loads(json.dumps(cfg.to_dict()))
    with zipfile.ZipFile(io.BytesIO(base64.b64decode(consts["SEGKIT_BUNDLE"]))) as zf:
        names = set(zf.namelist())
        src = Path(segkit.__file__).parent
        expected = {p.relative_to(src.parent).as_posix() for p in src.rglob("*.py") if "__pycache__" not in p.parts}
        assert expected <= names
        assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)
        assert zf.read("segkit/kaggle/runtime.py") == (src / "kaggle" / "runtime.py").read_bytes()
    again = build_kernel(cfg, "cloud-net-folds-fold1", "train", 1, tmp_path / "again")
    assert again.code_file.read_bytes() == built.code_file.read_bytes()  # reproducible


def test_the_bundle_carries_the_package_data_and_works_unpacked(tmp_path):
    """Unpacked elsewhere (as the kernel does), the bundle alone finds its built-in configs and template."""
    built = build_kernel(make_cfg(), "cloud-net-folds-fold1", "train", 1, tmp_path / "b")
    bundle = base64.b64decode(script_constants(built.code_file)["SEGKIT_BUNDLE"])
    with zipfile.ZipFile(io.BytesIO(bundle)) as zf:
        names = set(zf.namelist())
        zf.extractall(tmp_path / "unpacked")
    assert {"segkit/configs/demo.yaml", "segkit/configs/cloud38.yaml", "segkit/kernels/kernel.py",
            "segkit/kernels/kernel-metadata.json"} <= names
    probe = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "import segkit, segkit.config as c\n"
        "from segkit.kaggle.bundle import build_kernel\n"
        "assert segkit.__file__.startswith(sys.argv[1]), segkit.__file__\n"
        "cfg = c.load_config('cloud38', ['kaggle.owner=someone'])\n"
        "k = build_kernel(cfg, 'from-the-bundle', 'infer', out_dir=sys.argv[2])\n"
        "print(sorted(c.builtin_configs()), k.code_file.name)\n"
    )
    res = subprocess.run([sys.executable, "-c", probe, str(tmp_path / "unpacked"), str(tmp_path / "out")],
                         capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "'cloud38'" in res.stdout and "'demo'" in res.stdout and "infer.py" in res.stdout
    assert script_constants(tmp_path / "out" / "from-the-bundle" / "infer.py")["KIND"] == "infer"


@pytest.mark.parametrize("kind, fold", [("train", 2), ("train", None), ("infer", None)])
def test_one_template_fills_every_kind(tmp_path, kind, fold):
    built = build_kernel(make_cfg(), f"cloud-net-folds-{kind}", kind, fold, tmp_path)
    text = built.code_file.read_text()
    assert "@@" not in text
    assert script_constants(built.code_file)["KIND"] == kind and script_constants(built.code_file)["FOLD"] == fold
    assert text.startswith(f'"""segkit {"training" if kind == "train" else "inference"} kernel: ')
    assert built.code_file.name == f"{kind}.py"


def test_missing_templates_are_a_kaggle_error(tmp_path):
    (tmp_path / "tpl").mkdir()
    with pytest.raises(KaggleError, match=r"tpl/kernel.py: kernel template not found"):
        build_kernel(make_cfg(), "cloud-net-folds-fold0", "train", 0, tmp_path / "out", templates=tmp_path / "tpl")
    assert not (tmp_path / "out").exists()


def test_infer_kernel_takes_extra_kernel_sources(tmp_path):
    built = build_kernel(make_cfg(kernel_sources=["someone/older-models"]), "cloud-net-folds-infer", "infer",
                         None, tmp_path, extra_kernel_sources=["someone/cloud-net-folds-fold0"])
    assert built.metadata["kernel_sources"] == ["someone/older-models", "someone/cloud-net-folds-fold0"]
    assert built.metadata["code_file"] == "infer.py"
    assert script_constants(built.code_file)["KIND"] == "infer"
    assert built.warnings == []
    alone = build_kernel(make_cfg(), "cloud-net-folds-infer", "infer", None, tmp_path / "alone")
    assert alone.warnings and "no kernel or model sources" in alone.warnings[0]


def test_build_command_and_its_errors(tmp_path, capsys):
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(yaml.safe_dump({"name": "c38", "train": {"folds": 3}, "kaggle": KAGGLE}))
    out = tmp_path / "build"
    assert main(["kernel", "build", "cloud-net-folds-fold0", "--config", str(cfg_path), "kaggle.machine_shape=NvidiaL4",
                 "--fold", "0", "--out", str(out)]) == 0
    assert "internet False" in capsys.readouterr().out
    assert json.loads((out / "cloud-net-folds-fold0" / "kernel-metadata.json").read_text())["machine_shape"] == "NvidiaL4"
    assert main(["kernel", "build", "cloud-net-folds-fold7", "--config", str(cfg_path), "--fold", "7",
                 "--out", str(out)]) == 1
    assert "--fold: 7 is outside 0..2" in capsys.readouterr().err
    assert main(["kernel", "build", "tiny", "--config", str(cfg_path), "--out", str(out)]) == 1
    assert "slug 'tiny' must be at least 5 characters" in capsys.readouterr().err
    assert not (out / "tiny").exists()


def test_build_without_owner_uses_the_credentials_or_says_what_to_set(kaggle_env, tmp_path, monkeypatch):
    cfg = config_from_dict({"name": "c38", "kaggle": {"slug": "segkit-c38"}})
    assert build_kernel(cfg, "segkit-c38", out_dir=tmp_path).metadata["id"] == f"{FAKE_USER}/segkit-c38"
    (tmp_path / "kaggle-config" / "kaggle.json").unlink()
    with pytest.raises(ConfigError, match="kaggle.owner: not set"):
        build_kernel(cfg, "segkit-c38", out_dir=tmp_path / "b2")


# --- metadata rules ------------------------------------------------------------------------------

def good_meta():
    return {"id": "someone/a-kernel", "title": "a kernel", "code_file": "train.py", "language": "python",
            "kernel_type": "script", "is_private": True, "enable_gpu": True, "enable_internet": False,
            "dataset_sources": ["a/b"], "kernel_sources": [], "competition_sources": ["c"], "model_sources": []}


@pytest.mark.parametrize("change, message", [
    ({"enable_gpu": 1}, "'enable_gpu' is 1; expected true or false"),
    ({"enable_internet": None}, "'enable_internet' is None"),
    ({"id": "someone/abcd"}, "at least 5 characters"),
    ({"id": "someone/a-kernel/3"}, "no version"),
    ({"title": "abc"}, "'title' 'abc' must be at least 5"),
    ({"language": "julia"}, "'language' is 'julia'"),
    ({"kernel_type": "app"}, "'kernel_type' is 'app'"),
    ({"kernel_sources": ["x/abc"]}, "at least 5 characters"),
    ({"competition_sources": ["a/b"]}, "must be a competition slug"),
    ({"code_file": ""}, "'code_file' is required"),
])
def test_metadata_rules(change, message):
    meta = {**good_meta(), **change}
    with pytest.raises(KaggleError, match=message):
        validate_metadata(meta)


def test_missing_enable_internet_is_refused_and_soft_rules_warn(tmp_path):
    meta = good_meta()
    del meta["enable_internet"]
    with pytest.raises(KaggleError, match="client then turns internet ON"):
        validate_metadata(meta)
    with pytest.raises(KaggleError, match="title 'Another Name' does not slugify .* set 'title' to 'a kernel'"):
        validate_metadata({**good_meta(), "title": "Another Name"})  # Kaggle would name a new kernel from it
    with pytest.raises(KaggleError, match="code_file 'train.py' not found"):
        validate_metadata(good_meta(), tmp_path)


def test_push_refuses_invalid_metadata_before_any_call(kaggle_env, tmp_path, capsys):
    folder = tmp_path / "k"
    folder.mkdir()
    (folder / "train.py").write_text("print(1)\n")
    (folder / "kernel-metadata.json").write_text(json.dumps({**good_meta(), "enable_gpu": 1}))
    assert main(["kernel", "push", str(folder)]) == 1
    assert "'enable_gpu' is 1" in capsys.readouterr().err
    assert kaggle_env.received == []


# --- fold fan-out ----------------------------------------------------------------------------------

def test_parse_folds():
    assert parse_folds("0-4", 5) == [0, 1, 2, 3, 4]
    assert parse_folds("3,1,1", 5) == [3, 1]
    for bad in ("0-5", "x", ""):
        with pytest.raises(ConfigError, match="--folds"):
            parse_folds(bad, 5)


def test_push_folds_pushes_one_kernel_per_fold_and_an_inference_kernel(kaggle_env, tmp_path, capsys):
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(yaml.safe_dump({"name": "c38", "train": {"folds": 3},
                                        "kaggle": {**KAGGLE, "owner": FAKE_USER}}))
    rc = main(["kernel", "push-folds", "--config", str(cfg_path), "--folds", "0-2", "--out", str(tmp_path / "b")])
    assert rc == 0, capsys.readouterr().err
    bodies = [c.json for c in kaggle_env.calls("SaveKernel")]
    assert [b["slug"] for b in bodies] == [f"{FAKE_USER}/cloud-net-folds-fold{k}" for k in range(3)] + [
        f"{FAKE_USER}/cloud-net-folds-infer"]
    for k, b in enumerate(bodies[:3]):
        assert script_constants_from_text(b["text"])["FOLD"] == k
        assert b["text"] == (tmp_path / "b" / f"cloud-net-folds-fold{k}" / "train.py").read_text()
        assert b["enableInternet"] is False and b["machineShape"] == "NvidiaTeslaT4"
    infer = bodies[3]
    assert infer["kernelDataSources"] == [f"{FAKE_USER}/cloud-net-folds-fold{k}" for k in range(3)]
    assert script_constants_from_text(infer["text"])["KIND"] == "infer"
    # the inference kernel is pushed only after every fold kernel reported COMPLETE
    order = [r.call.split("/")[-1] for r in kaggle_env.received if r.call.split("/")[-1] != "GetKernel"]
    assert order == ["SaveKernel"] * 3 + ["GetKernelSessionStatus"] * 3 + ["SaveKernel"]


def test_push_folds_does_not_push_inference_after_a_failed_fold(kaggle_env, tmp_path, capsys):
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(yaml.safe_dump({"name": "c38", "train": {"folds": 2},
                                        "kaggle": {**KAGGLE, "owner": FAKE_USER, "poll_seconds": 0.01}}))
    kaggle_env.kernel_states["cloud-net-folds-fold1"] = [("RUNNING", ""), ("ERROR", "Kernel ran out of time")]
    rc = main(["kernel", "push-folds", "--config", str(cfg_path), "--out", str(tmp_path / "b")])
    assert rc == 1
    assert "cloud-net-folds-fold1 ended with ERROR: Kernel ran out of time" in capsys.readouterr().err
    assert [c.json["slug"] for c in kaggle_env.calls("SaveKernel")] == [
        f"{FAKE_USER}/cloud-net-folds-fold0", f"{FAKE_USER}/cloud-net-folds-fold1"]
    assert main(["kernel", "push-folds", "--config", str(cfg_path), "--out", str(tmp_path / "b"),
                 "--no-wait"]) == 0  # a rerun pushes nothing again (--again would)
    assert "rerun the same command" in capsys.readouterr().out
    assert len(kaggle_env.calls("SaveKernel")) == 2


def test_push_folds_dry_run_pushes_nothing(kaggle_env, tmp_path, capsys):
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(yaml.safe_dump({"name": "c38", "train": {"folds": 3}, "kaggle": KAGGLE}))
    assert main(["kernel", "push-folds", "--config", str(cfg_path), "--out", str(tmp_path / "b"), "--dry-run"]) == 0
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == [
        "cloud-net-folds-fold0", "cloud-net-folds-fold1", "cloud-net-folds-fold2", "cloud-net-folds-infer"]
    assert kaggle_env.received == []


def script_constants_from_text(text: str) -> dict:
    tree = ast.parse(text)
    return {n.targets[0].id: ast.literal_eval(n.value) for n in tree.body
            if isinstance(n, ast.Assign) and isinstance(n.targets[0], ast.Name) and n.targets[0].id in ("KIND", "FOLD")}


# --- machines: two T4s by default, TPU kernels never on a pinned image -----------------------------

def test_gpu_kernel_defaults_to_two_t4s_and_a_given_shape_wins(tmp_path):
    kaggle = {k: v for k, v in KAGGLE.items() if k != "machine_shape"}
    cfg = config_from_dict({"name": "c38", "train": {"folds": 3}, "kaggle": kaggle})
    assert build_kernel(cfg, "cloud-net-folds-fold0", "train", 0, tmp_path).metadata["machine_shape"] == "NvidiaTeslaT4"
    p100 = build_kernel(make_cfg(machine_shape="NvidiaTeslaP100"), "cloud-net-folds-fold1", "train", 1, tmp_path)
    assert p100.metadata["machine_shape"] == "NvidiaTeslaP100"
    cpu = config_from_dict({"name": "c38", "train": {"folds": 3}, "kaggle": {**kaggle, "enable_gpu": False}})
    assert "machine_shape" not in build_kernel(cpu, "cloud-net-folds-fold2", "train", 2, tmp_path).metadata


def test_tpu_kernel_has_no_pinned_image(tmp_path):
    tpu = {"enable_gpu": False, "enable_tpu": True, "machine_shape": "TpuV5E8"}
    built = build_kernel(make_cfg(**tpu), "cloud-net-folds-fold0", "train", 0, tmp_path)
    assert built.metadata["enable_tpu"] is True and built.metadata["machine_shape"] == "TpuV5E8"
    assert not any(k.startswith("docker_image") for k in built.metadata)
    with pytest.raises(ConfigError, match="kaggle.docker_image_pinning_type: 'original' pins"):
        kaggle_config(make_cfg(**tpu, docker_image_pinning_type="original"))
    with pytest.raises(ConfigError, match="kaggle.machine_shape: TpuV5E8 is a TPU; set kaggle.enable_tpu"):
        kaggle_config(make_cfg(machine_shape="TpuV5E8"))
    with pytest.raises(KaggleError, match="'docker_image' pins"):
        validate_metadata({**built.metadata, "docker_image": "gcr.io/kaggle-images/python@sha256:abc"})
    templates = tmp_path / "tpl"
    templates.mkdir()
    from segkit.kaggle.bundle import templates_dir

    (templates / "kernel.py").write_text((templates_dir() / "kernel.py").read_text())
    (templates / "kernel-metadata.json").write_text(json.dumps({"language": "python", "docker_image": "x"}))
    with pytest.raises(KaggleError, match="template: 'docker_image' pins"):
        build_kernel(make_cfg(**tpu), "cloud-net-folds-fold1", "train", 1, tmp_path / "out", templates=templates)


def test_tpu_kernel_runs_the_jax_backend_unless_told_otherwise():
    from segkit.kaggle.runtime import tpu_backend

    tpu = {"kaggle": {"enable_tpu": True, "enable_gpu": False}}
    env = {}
    assert "KERAS_BACKEND=jax" in tpu_backend(tpu, env) and env == {"KERAS_BACKEND": "jax"}
    env = {"KERAS_BACKEND": "tensorflow"}
    assert tpu_backend(tpu, env) is None and env["KERAS_BACKEND"] == "tensorflow"  # the user's choice stays
    env = {}
    assert tpu_backend({"kaggle": {"enable_gpu": True}}, env) is None and env == {}
