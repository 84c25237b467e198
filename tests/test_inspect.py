"""`inspect` on a model exported with dynamic H and W: shapes from --data or --input-shape."""
import json

import onnx
import pytest
from click.testing import CliRunner

from conftest import FIX
from infoprobe.cli.main import cli


@pytest.fixture(scope="module")
def dynamic_cnn(tmp_path_factory):
    m = onnx.load(str(FIX / "cnn_small.onnx"))
    dims = m.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "H", "W"
    path = tmp_path_factory.mktemp("dyn") / "cnn_dyn.onnx"
    onnx.save(m, str(path))
    return path


def _sites(args):
    r = CliRunner().invoke(cli, ["inspect", *map(str, args), "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output[r.output.index("{"):])
    return {lay["name"]: lay["shape"] for lay in doc["layers"]}, doc


@pytest.mark.parametrize("how", [["--data", FIX / "mnist_demo.npz"], ["--input-shape", "1,28,28"],
                                 ["--input-shape", "input=1,28,28"]])
def test_dynamic_dims_are_read_at_the_given_shape(dynamic_cnn, how):
    static, _ = _sites([FIX / "cnn_small.onnx"])          # the same network exported with fixed H, W
    found, doc = _sites([dynamic_cnn, *how])
    assert found == static and len(found) == 3
    assert any("symbolic dimensions" in n for n in doc["notes"])


def test_without_a_shape_the_convs_say_how_to_find_them(dynamic_cnn):
    found, doc = _sites([dynamic_cnn])
    assert list(found) == ["fc"]
    assert all("--input-shape" in u["reason"] for u in doc["unsupported"]) and len(doc["unsupported"]) == 2


def test_a_malformed_input_shape_exits_2(dynamic_cnn):
    r = CliRunner().invoke(cli, ["inspect", str(dynamic_cnn), "--input-shape", "1,x,28"])
    assert r.exit_code == 2 and "--input-shape" in r.output
