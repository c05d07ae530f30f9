import pytest

from pipelines.cli import info, main


def test_info_reports_the_pinned_stack(capsys):
    report = info()
    assert report["packages"]["torch"].startswith("2.14.1")
    assert "torch" in report["backends"]["cpu"]
    assert main(["info"]) == 0
    assert "HSA backends on cpu" in capsys.readouterr().out


def test_unknown_command_is_an_error():
    with pytest.raises(SystemExit):
        main(["frobnicate"])
