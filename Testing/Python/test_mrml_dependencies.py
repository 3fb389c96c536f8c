"""Installing missing Python packages on first use, after a confirmation (the dialogs are stand-ins)."""

from AutoSegSensitivity.mrml import dependencies


def test_nothing_missing_asks_nothing():
    asked = []
    assert dependencies.ensure_dependencies(asked.append, lambda r: asked.append(r), need_torch=True)
    assert asked == []


def test_missing_package_is_installed_only_after_confirmation():
    packages = {"json": "json", "no_such_module_xyz": "no-such-module-xyz>=1.0"}
    assert dependencies.missing_packages(packages) == ["no-such-module-xyz>=1.0"]
    messages, installed = [], []

    def refuse(msg):
        messages.append(msg)
        return False

    assert not dependencies.ensure_dependencies(refuse, installed.append, packages=packages)
    assert installed == [] and "no-such-module-xyz" in messages[0]
    # accepted: the installer is called with the quoted requirement; still missing afterwards -> False
    assert not dependencies.ensure_dependencies(lambda m: True, installed.append, packages=packages)
    assert installed == ['"no-such-module-xyz>=1.0"']


def test_torch_goes_through_the_torch_installer(monkeypatch):
    monkeypatch.setattr(dependencies, "torch_missing", lambda: True)
    calls = []
    assert not dependencies.ensure_dependencies(lambda m: calls.append(m) or True, calls.append,
                                                install_torch=lambda: calls.append("torch"), need_torch=True,
                                                packages={})
    assert "PyTorch" in calls[0] and calls[1] == "torch"


def test_core_packages_are_a_subset_of_the_full_list():
    assert set(dependencies.CORE_PACKAGES.items()) < set(dependencies.PACKAGES.items())
    assert "monai" not in dependencies.CORE_PACKAGES and "monai" in dependencies.PACKAGES
