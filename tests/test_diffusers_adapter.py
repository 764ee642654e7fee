"""A diffusers UNet2DModel folder as a teacher: layer ids, groups, and the sigma conversion."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from initprobe.ablate.select import select
from initprobe.errors import UserError
from initprobe.nets.diffusers_adapter import DiffusersDenoiser
from initprobe.nets.io import load_generator, load_network
from initprobe.nets.layers import layer_table, lowest_res, named_blocks, named_layers

RES = 16
CONFIG = {"sample_size": RES, "in_channels": 2, "out_channels": 2, "block_out_channels": (16, 32),
          "layers_per_block": 1, "down_block_types": ("DownBlock2D", "AttnDownBlock2D"),
          "up_block_types": ("AttnUpBlock2D", "UpBlock2D"), "norm_num_groups": 8,
          "attention_head_dim": 8}


def ddpm(prediction_type, schedule="linear", start=1e-4, end=0.02, cls="DDPMScheduler"):
    return {"_class_name": cls, "beta_schedule": schedule, "beta_start": start, "beta_end": end,
            "num_train_timesteps": 1000, "prediction_type": prediction_type}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small convs on shared CPU cores run far faster on one thread than on contended two."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def save_unet(folder, scheduler=None, **overrides):
    """A randomly initialized UNet2DModel (every parameter perturbed), saved by diffusers."""
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(**{**CONFIG, **overrides})
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    unet.save_pretrained(folder)
    if scheduler is not None:
        (folder / "scheduler_config.json").write_text(json.dumps(scheduler))
    return unet.eval()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ddpm")
    return folder, save_unet(folder)


def assert_resolutions(net):
    """Each layer's recorded resolution is the spatial size of its output in a forward pass."""
    table = layer_table(net).set_index("layer")
    seen = {}
    hooks = [m.register_forward_hook(lambda m, i, o, k=k: seen.update({k: o.shape}))
             for k, m in named_layers(net).items()]
    with torch.no_grad():
        net(torch.randn(1, 2, RES, RES), 1.0)
    for h in hooks:
        h.remove()
    assert set(seen) == set(table.index)
    checked = 0
    for layer, shape in seen.items():
        if len(shape) == 4:  # (batch, channels, h, w)
            size = shape[-1]
        elif len(shape) == 3:  # attention: (batch, channels, tokens) norm, (batch, tokens, ch)
            size = (shape[2] if table.loc[layer, "kind"] == "GroupNorm" else shape[1]) ** 0.5
        else:  # embedding MLP and per-block affine: no spatial size
            continue
        res, row = table.loc[layer, "res"], table.loc[layer]
        if row["sublayer"] == "norm0" and row["block"] in ("down", "up"):
            res = res * 2 if row["block"] == "down" else res // 2  # before the resampling, as EDM
        assert size == res, layer
        checked += 1
    assert checked == len(table) - (table["sublayer"] == "affine").sum() - 2


def test_layer_table_has_canonical_ids_at_the_right_resolutions(saved):
    net = load_network(saved[0])
    assert isinstance(net, DiffusersDenoiser) and lowest_res(net) == RES // 2
    table = layer_table(net).set_index("layer")
    paths = net.layer_paths
    assert paths["map_layer0"] == "time_embedding.linear_1"
    assert paths["enc.16x16_conv"] == "conv_in"
    assert paths["enc.16x16_block0.conv0"] == "down_blocks.0.resnets.0.conv1"
    assert paths["enc.8x8_down"] == "down_blocks.0.downsamplers.0.conv"
    assert paths["enc.8x8_block0.skip"] == "down_blocks.1.resnets.0.conv_shortcut"
    assert paths["enc.8x8_block0.q"] == "down_blocks.1.attentions.0.to_q"
    assert paths["dec.8x8_in0.proj"] == "mid_block.attentions.0.to_out.0"
    assert paths["dec.8x8_in1.conv1"] == "mid_block.resnets.1.conv2"
    assert paths["dec.8x8_block1.affine"] == "up_blocks.0.resnets.1.time_emb_proj"
    assert paths["dec.16x16_up"] == "up_blocks.0.upsamplers.0.conv"
    assert paths["dec.16x16_block1.norm0"] == "up_blocks.1.resnets.1.norm1"
    assert paths["dec.16x16_aux_norm"] == "conv_norm_out"
    assert paths["dec.16x16_aux_conv"] == "conv_out"
    # every parameter belongs to exactly one canonical layer
    assert table["params"].sum() == sum(p.numel() for p in net.parameters())
    assert len(set(paths.values())) == len(paths)
    # sides follow the diffusers module tree
    side = {"time_embedding": "map", "conv_in": "enc", "down_blocks": "enc", "mid_block": "dec",
            "up_blocks": "dec", "conv_norm_out": "dec", "conv_out": "dec"}
    for layer, path in paths.items():
        assert table.loc[layer, "side"] == side[path.split(".")[0]], layer
    assert_resolutions(net)



def test_resnet_samplers_are_blocks_with_sublayers(tmp_path):
    save_unet(tmp_path, downsample_type="resnet", upsample_type="resnet",
              down_block_types=("AttnDownBlock2D", "DownBlock2D"))
    net = load_network(tmp_path)
    assert net.layer_paths["enc.8x8_down.conv0"] == "down_blocks.0.downsamplers.0.conv1"
    assert net.layer_paths["dec.16x16_up.affine"] == "up_blocks.0.upsamplers.0.time_emb_proj"
    assert named_blocks(net)["dec.16x16_up"] is net.unet.up_blocks[0].upsamplers[0]
    assert_resolutions(net)

def test_groups_select_the_matching_diffusers_modules(saved):
    net = load_network(saved[0])
    paths = net.layer_paths

    def chosen(spec):
        return {paths[i].split(".")[0] for i in select(net, spec)}

    assert chosen("decoder") == {"up_blocks"}
    assert {paths[i] for i in select(net, "decoder")} == {
        n for n, m in net.unet.named_modules()
        if n.startswith("up_blocks.") and any(True for _ in m.parameters(recurse=False))}
    assert chosen("bottleneck") == {"mid_block"} and chosen("encoder") == {"down_blocks"}
    assert chosen("embedding") == {"time_embedding"} and chosen("stem") == {"conv_in"}
    assert {paths[i] for i in select(net, "head")} == {"conv_norm_out", "conv_out"}
    assert {paths[i].rsplit(".", 1)[-1] for i in select(net, "attention")} == {
        "group_norm", "to_q", "to_k", "to_v", "0"}
    blocks = named_blocks(net)
    assert blocks["enc.8x8_block0"] is net.unet.down_blocks[1].attentions[0]
    assert blocks["enc.16x16_block0"] is net.unet.down_blocks[0].resnets[0]
    assert blocks["dec.8x8_in0"] is net.unet.mid_block.attentions[0]
    assert blocks["dec.16x16_up"] is net.unet.up_blocks[0].upsamplers[0]
    assert next(iter(blocks)) == "enc.16x16_conv" and list(blocks)[-1] == "dec.16x16_aux_conv"


def test_reinit_of_the_decoder_touches_only_up_blocks(saved):
    net = load_network(saved[0])
    before = {k: v.clone() for k, v in net.unet.state_dict().items()}
    layers = named_layers(net)
    torch.manual_seed(1)
    for i in select(net, "decoder"):
        layers[i].reset_parameters()
    after = net.unet.state_dict()
    changed = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"up_blocks"}


def hand_alphas_cumprod(kind="linear", start=1e-4, end=0.02, steps=1000):
    if kind == "linear":
        betas = np.linspace(start, end, steps, dtype=np.float64)
    else:  # scaled_linear
        betas = np.linspace(start**0.5, end**0.5, steps, dtype=np.float64) ** 2
    return np.cumprod(1 - betas)


@pytest.mark.parametrize("scheduler,kind", [
    (None, "linear"),
    (ddpm("epsilon", "scaled_linear", 0.00085, 0.012, "DDIMScheduler"), "scaled_linear"),
    (ddpm("v_prediction"), "linear"),
    (ddpm("sample"), "linear"),
])
def test_outputs_equal_the_hand_computed_conversion(tmp_path, scheduler, kind):
    unet = save_unet(tmp_path, scheduler)
    net = load_network(tmp_path)
    start, end = (0.00085, 0.012) if kind == "scaled_linear" else (1e-4, 0.02)
    abar = hand_alphas_cumprod(kind, start, end)
    sig = np.sqrt((1 - abar) / abar)
    steps = [0, 10, 500, 999]
    sigma = torch.tensor([sig[t] for t in steps] + [np.sqrt(sig[20] * sig[21])],
                         dtype=torch.float32)
    frac = np.log(float(sigma[-1]) / sig[20]) / np.log(sig[21] / sig[20])
    t_hand = torch.tensor(steps + [20 + frac], dtype=torch.float32)
    torch.testing.assert_close(net.timestep(sigma), t_hand, atol=2e-3, rtol=0)
    assert net.timestep(torch.tensor([1e-6, 1e6])).tolist() == [0.0, 999.0]
    x = torch.randn(len(sigma), 2, RES, RES, generator=torch.Generator().manual_seed(2))
    s = sigma.reshape(-1, 1, 1, 1)
    c = 1 / (1 + s**2).sqrt()
    with torch.no_grad():
        f = unet(c * x, t_hand).sample
        got = net(x, sigma)
    prediction = (scheduler or {}).get("prediction_type", "epsilon")
    want = {"epsilon": x - s * f, "sample": f, "v_prediction": c**2 * x - s * c * f}[prediction]
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert net.prediction_type == prediction


def test_pipeline_folder_and_refusals(tmp_path, saved):
    pipe = tmp_path / "pipe"
    save_unet(pipe / "unet")
    (pipe / "scheduler").mkdir()
    (pipe / "scheduler" / "scheduler_config.json").write_text(json.dumps(
        {"_class_name": "DDPMScheduler", "beta_schedule": "linear", "prediction_type": "sample"}))
    net = load_network(pipe)
    assert net.prediction_type == "sample" and net.schedule_source.endswith(
        "scheduler/scheduler_config.json")
    assert load_network(saved[0]).schedule_source.startswith("assumed: DDPM")
    with pytest.raises(UserError, match="preconditioning override"):
        load_network(saved[0], precond="edm")
    cond = tmp_path / "cond"
    save_unet(cond, num_class_embeds=10)
    with pytest.raises(UserError, match="class conditioning"):
        load_network(cond)
    ve = tmp_path / "ve"
    save_unet(ve, {"_class_name": "ScoreSdeVeScheduler", "sigma_min": 0.01, "sigma_max": 50})
    with pytest.raises(UserError, match="ScoreSdeVeScheduler is not a discrete VP"):
        load_network(ve)
    skip = tmp_path / "skip"
    save_unet(skip, block_out_channels=(32, 32), down_block_types=("DownBlock2D",
              "AttnSkipDownBlock2D"), up_block_types=("AttnSkipUpBlock2D", "SkipUpBlock2D"))
    with pytest.raises(UserError, match="has no initprobe layer id"):
        load_network(skip)


def test_probe_and_cka_run_on_a_diffusers_teacher(saved):
    folder, _ = saved
    from initprobe.measure.analyses.activations import probe_activations
    from initprobe.measure.analyses.profiles import ProbeOptions
    from initprobe.measure.analyses.similarity import cka_diagonal
    net = load_network(folder)
    images = torch.rand(8, CONFIG["in_channels"], RES, RES) * 2 - 1
    df = probe_activations(net, images, ProbeOptions([0.5, 5.0]))
    probed = list(dict.fromkeys(df.layer))
    assert len(probed) == len(named_blocks(net))
    assert all(lid in named_layers(net) for lid in probed)
    diag = cka_diagonal(net, net, images, ProbeOptions([0.5], batch=8))
    assert np.allclose(diag["value"], 1.0, atol=1e-6)


def test_train_a_one_step_student_from_a_diffusers_teacher(tmp_path):
    from initprobe.diffusion import GeneratorMap
    from initprobe.train.onestep import OneStepConfig, train_onestep
    save_unet(tmp_path / "teacher", sample_size=8, in_channels=1, out_channels=1)
    cfg = OneStepConfig(teacher=str(tmp_path / "teacher"), objective="gan", images=64, batch=16,
                        eval_n=0, log_every=2)
    train_onestep(cfg, tmp_path / "run", progress=False)
    student, gen_map = load_generator(tmp_path / "run")
    assert isinstance(student, DiffusersDenoiser)
    assert gen_map == GeneratorMap()
    z = torch.randn(2, 1, 8, 8)
    assert torch.isfinite(student(80 * z, 80.0)).all()
    teacher = load_network(tmp_path / "teacher")
    changed = [k for k, v in student.state_dict().items()
               if not torch.equal(v, teacher.state_dict()[k])]
    assert changed  # the GAN steps moved the generator away from the teacher


def test_a_folder_with_only_bin_weights_gives_exactly_one_line(tmp_path):
    torch.manual_seed(0)
    diffusers.UNet2DModel(**CONFIG).save_pretrained(tmp_path, safe_serialization=False)
    assert (tmp_path / "diffusion_pytorch_model.bin").is_file()
    run = subprocess.run([sys.executable, "-m", "initprobe", "layers", str(tmp_path)],
                         check=False, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode != 0 and run.stdout == ""
    lines = run.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), run.stderr
    assert "only pickled weights (diffusion_pytorch_model.bin)" in lines[0]
    assert "diffusion_pytorch_model.safetensors" in lines[0]
