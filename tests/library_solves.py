"""Which library solves a model's forward pass reaches: a backend comparison whose reference never reached torchsde
or torchcde would compare the fast backend with itself and pass whatever either did."""
import torchcde
import torchsde


def _counted(solve, seen: list[str], cde: bool):
    def counted(*args, **kwargs):
        seen.append("cdeint" if cde else type(args[0] if args else kwargs["sde"]).__name__)
        return solve(*args, **kwargs)
    return counted


def record_library_solves(monkeypatch) -> list[str]:
    """From now on, each ``torchsde.sdeint`` / ``sdeint_adjoint`` call appends the class name of the SDE it solves,
    and each ``torchcde.cdeint`` call appends ``"cdeint"`` (torchcde then solves its own ``_VectorField`` SDE)."""
    seen: list[str] = []
    for module, name in ((torchsde, "sdeint"), (torchsde, "sdeint_adjoint"), (torchcde, "cdeint")):
        monkeypatch.setattr(module, name, _counted(getattr(module, name), seen, cde=name == "cdeint"))
    return seen
