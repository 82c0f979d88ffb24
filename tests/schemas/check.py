"""Validates JSON documents against the project's JSON Schemas (draft 2020-12).

    check.py examples             every file of schemas/examples and every demo job; exit 1 on a failure
    check.py corpus FILE          prints {"<name>": true|false} for each {"name", "message"} of FILE

Run by the integration tests (tests/integration/schemas.rs) with the project's .venv.
"""
import json
import pathlib
import sys

from jsonschema import Draft202012Validator, FormatChecker
from referencing import Registry, Resource

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "schemas"


def registry():
    resources = []
    for path in SCHEMAS.glob("*.schema.json"):
        schema = json.loads(path.read_text())
        Draft202012Validator.check_schema(schema)
        resources.append((schema["$id"], Resource.from_contents(schema)))
    return Registry().with_resources(resources)


def validator(name, reg):
    schema = json.loads((SCHEMAS / name).read_text())
    return Draft202012Validator(schema, registry=reg, format_checker=FormatChecker())


def main():
    reg = registry()
    job = validator("job.schema.json", reg)
    if sys.argv[1] == "examples":
        failures = 0
        documents = [(p.name, json.loads(p.read_text())) for p in sorted((SCHEMAS / "examples").glob("*.json"))]
        for path in sorted((ROOT / "demo").glob("*.ndjson")):
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if line.strip():
                    documents.append((f"{path.name}:{number}", json.loads(line)))
        for name, document in documents:
            if name.startswith("audit-event"):
                check = validator("audit-event.schema.json", reg)
            elif name.startswith("crm-event"):
                check = validator("crm-event.schema.json", reg)
            else:
                check = job
            errors = sorted(check.iter_errors(document), key=lambda e: e.path)
            for error in errors:
                print(f"{name}: {'/'.join(map(str, error.absolute_path))}: {error.message}")
            failures += bool(errors)
        print(f"{len(documents)} documents, {failures} invalid")
        sys.exit(1 if failures else 0)
    if sys.argv[1] == "corpus":
        corpus = json.loads(pathlib.Path(sys.argv[2]).read_text())
        print(json.dumps({case["name"]: job.is_valid(case["message"]) for case in corpus}))


if __name__ == "__main__":
    main()
