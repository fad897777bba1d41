import pytest

from export import UnknownArchitectureError, registry

LECTURE = [
    "alexnet",
    "vgg11",
    "vgg11_bn",
    "vgg13",
    "vgg13_bn",
    "vgg16",
    "vgg16_bn",
    "vgg19",
    "vgg19_bn",
    "googlenet",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
]


def test_registry_holds_every_lecture_architecture_in_order():
    assert registry.names() == LECTURE


def test_every_entry_is_a_torchvision_builder():
    import torchvision

    available = set(torchvision.models.list_models(module=torchvision.models))
    assert set(registry.names()) <= available


def test_unknown_architecture_lists_the_known_ones():
    with pytest.raises(UnknownArchitectureError) as e:
        registry.get("lenet")
    message = str(e.value)
    assert "unknown architecture 'lenet'" in message
    assert "resnet50" in message and "googlenet" in message


def test_lookup_is_case_insensitive():
    assert registry.get("ResNet50").name == "resnet50"


def test_resolve_keeps_order_and_drops_duplicates():
    assert [a.name for a in registry.resolve(["vgg16", "alexnet", "vgg16"])] == ["vgg16", "alexnet"]
    assert len(registry.resolve(None, all_=True)) == len(LECTURE)


def test_resolve_without_names_is_an_error():
    with pytest.raises(UnknownArchitectureError, match="no architecture given"):
        registry.resolve([])


def test_googlenet_is_built_without_aux_heads():
    assert registry.get("googlenet").builder_kwargs["aux_logits"] is False


def test_entries_are_immutable_data():
    arch = registry.get("resnet18")
    with pytest.raises(AttributeError):
        arch.max_batch_size = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        arch.builder_kwargs["x"] = 1  # type: ignore[index]


def test_fp16_tolerance_is_looser_than_fp32():
    for arch in registry.ARCHITECTURES.values():
        assert arch.fp16.atol >= arch.fp32.atol and arch.fp16.rtol >= arch.fp32.rtol


def test_registry_modules_do_not_import_torch():
    import subprocess
    import sys

    code = (
        "import sys, export.registry, export.golden, export.metrics, export.preprocess, export.steps; "
        "sys.exit('torch' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
