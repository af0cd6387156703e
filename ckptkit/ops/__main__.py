"""`python -m ckptkit.ops`: every IR op, what it is, and the targets that write it."""
from ckptkit.ir.registry import TARGETS, load_all


def main() -> None:
    ops = load_all()
    width = max(len(n) for n in ops)
    print(f"{'op':<{width}}  {'  '.join(f'{t:<5}' for t in TARGETS)}  what")
    for name, op in sorted(ops.items()):
        if name == "Input":
            continue
        marks = "  ".join(f"{('yes*' if t in op.checks else 'yes') if t in op.writers else '-':<5}" for t in TARGETS)
        print(f"{name:<{width}}  {marks}  {op.doc}")
    print("\nyes*: some attribute values have no exact form in that target and are refused before writing")


if __name__ == "__main__":
    main()
