import pytest

from cnn_deploy_core import UnknownArchitectureError, registry


def test_registry_covers_the_lecture_families_in_lecture_order():
    archs = list(registry.ARCHITECTURES.values())
    assert {a.family for a in archs} == set(registry.FAMILIES)
    # The lecture presents AlexNet, then VGG, GoogLeNet, ResNet: the registry lists them that way.
    positions = [registry.FAMILIES.index(a.family) for a in archs]
    assert positions == sorted(positions)
    assert all(a.name == a.name.lower() and a.name.startswith(a.family[:3]) for a in archs)


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
    assert [a.name for a in registry.resolve(None, all_=True)] == registry.names()


def test_resolve_without_names_is_an_error():
    with pytest.raises(UnknownArchitectureError, match="no architecture given"):
        registry.resolve([])


def test_googlenet_exports_without_its_training_only_aux_heads():
    import torchvision

    arch = registry.get("googlenet")
    model = torchvision.models.get_model(arch.builder, weights=None, **arch.builder_kwargs)
    assert model.aux1 is None and model.aux2 is None


def test_entries_are_immutable_data():
    arch = registry.get("resnet18")
    with pytest.raises(AttributeError):
        arch.max_batch_size = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        arch.builder_kwargs["x"] = 1  # type: ignore[index]


def test_fp16_tolerance_is_looser_than_fp32():
    for arch in registry.ARCHITECTURES.values():
        assert arch.fp16.atol >= arch.fp32.atol and arch.fp16.rtol >= arch.fp32.rtol
