"""Every third-party module the package imports is a declared dependency, with the lower bound
that .ci/lowest-versions.txt pins (CI runs the suite on those versions too) and at most some
releases excluded."""
import ast
import importlib.metadata
import os
import re
import sys

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "ttconv")
DYNAMIC_IMPORTS = {"import_held", "import_module"}


def normalized(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def imported_modules(source):
    """Top-level names of absolute imports, also those made with import_held("x") or import_module("x")."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) in DYNAMIC_IMPORTS:
            if node.args and isinstance(node.args[0], ast.Constant) and not node.args[0].value.startswith("ttconv"):
                names.add(node.args[0].value.split(".")[0])
    return names


def third_party_imports():
    found = {}
    for folder, _, files in sorted(os.walk(PACKAGE)):
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                with open(path, encoding="utf-8") as f:
                    for module in imported_modules(f.read()):
                        if module not in sys.stdlib_module_names and module != "ttconv":
                            found.setdefault(module, []).append(os.path.relpath(path, PACKAGE))
    return found


def declared():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    bounds = {}
    for requirement in project["dependencies"]:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([0-9][0-9a-z.]*)((?:,!=[0-9][0-9a-z.]*)*)",
                             requirement.replace(" ", ""))
        assert match, f"{requirement!r} needs a plain lower bound (name>=version), at most with releases excluded"
        excluded = match.group(3).split(",!=")[1:]
        assert match.group(2) not in excluded, f"{requirement!r} excludes its own lower bound"
        bounds[normalized(match.group(1))] = match.group(2)
    return bounds


def test_scanner_sees_every_kind_of_import():
    source = "import a.b\nfrom c import d\nfrom . import e\nx = import_held('f.g')\nimportlib.import_module('h')\n" \
             "import_held('ttconv._kernel')\n"
    assert imported_modules(source) == {"a", "c", "f", "h"}


def test_every_third_party_import_is_declared():
    distributions = importlib.metadata.packages_distributions()
    bounds = declared()
    missing = {}
    for module, files in third_party_imports().items():
        names = {normalized(d) for d in distributions.get(module, [module])}
        if not names & set(bounds):
            missing[module] = files
    assert missing == {}, f"imported but not in pyproject.toml dependencies: {missing}"


def test_lower_bounds_are_the_versions_ci_tests():
    with open(os.path.join(ROOT, ".ci", "lowest-versions.txt"), encoding="utf-8") as f:
        pins = dict(
            (normalized(name), version)
            for line in f if line.strip() and not line.startswith("#")
            for name, version in [line.strip().split("==")]
        )
    assert {name: pins.get(name) for name in declared()} == declared()
