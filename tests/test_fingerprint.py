"""Resumable outputs never mix runs (issue #24, item 4): a rerun into an output made from another
model, other inputs or other settings is refused with the difference named, or started over with
--overwrite; an output that is an input is refused before anything is written."""

import json
import os

import pytest

from phi4_jax import generate
from phi4_jax.data import decontam
from phi4_jax.posttrain import judge, plurality, pts
from phi4_jax.store import fingerprint
from phi4_jax.store.fingerprint import FingerprintError

from test_decontam import setup  # noqa: F401  (the decontamination fixture: benchmarks, sources)


def test_generate_refuses_edited_prompts_then_overwrites_and_never_writes_into_its_prompts(tiny_hf_dir, tmp_path):
  prompts, out = tmp_path / "p.jsonl", tmp_path / "o.jsonl"
  prompts.write_text('{"prompt": "one", "id": "a"}\n{"prompt": "two"}\n')
  argv = [f"--hf_dir={tiny_hf_dir}", f"--prompts_file={prompts}", f"--output={out}", "--max_new_tokens=3"]
  generate.main(argv)
  first = [json.loads(line) for line in out.read_text().splitlines()]
  assert [r.get("id") for r in first] == ["a", None]  # (a prompt's own id is carried)
  prompts.write_text('{"prompt": "three"}\n{"prompt": "four"}\n')  # edited: other prompts
  with pytest.raises(FingerprintError, match=r"o.jsonl was made from another run \(prompts.bytes: .*--overwrite"):
    generate.main(argv)
  with pytest.raises(FingerprintError, match=r"sampling.temperature: 0.0 -> 0.5"):
    generate.main([*argv, "--temperature=0.5"])
  generate.main([*argv, "--overwrite"])
  fresh = tmp_path / "fresh.jsonl"
  generate.main([f"--hf_dir={tiny_hf_dir}", f"--prompts_file={prompts}", f"--output={fresh}", "--max_new_tokens=3"])
  assert out.read_text() == fresh.read_text()  # (nothing of the old prompts left)
  before = prompts.read_text()
  with pytest.raises(ValueError, match=r"the output .*p.jsonl is the input --prompts_file"):
    generate.main([f"--hf_dir={tiny_hf_dir}", f"--prompts_file={prompts}", f"--output={prompts}"])
  assert prompts.read_text() == before


def test_pts_plurality_and_judge_refuse_another_seed_model_or_question_set(tiny_hf_dir, tmp_path):
  out = str(tmp_path / "pairs.jsonl")
  questions = [{"id": "q1", "question": "1+1?", "answer": "2"}]
  model_id = fingerprint.model_identity(tiny_hf_dir)
  settings = pts.pts_fields()
  pts.claim(out, model_id, questions, settings)
  pts.claim(out, model_id, questions, settings)  # the same run resumes
  open(out + ".log.jsonl", "w").write('{"question_id": "q1"}\n')
  settings.max_batch = 7  # batching: the pairs do not depend on it
  pts.claim(out, model_id, questions, settings)
  settings.seed = 1
  with pytest.raises(FingerprintError, match=r"settings.seed: 0 -> 1"):
    pts.claim(out, model_id, questions, settings)
  with pytest.raises(FingerprintError, match=r"questions.sha256"):
    pts.claim(out, model_id, [{**questions[0], "answer": "3"}], pts.pts_fields())
  pts.claim(out, model_id, questions, settings, overwrite=True)
  assert not os.path.exists(out + ".log.jsonl")  # the old log is gone with the old run
  votes = str(tmp_path / "votes.jsonl")
  plurality.claim(votes, model_id, questions, plurality.FIELDS.config())
  with pytest.raises(FingerprintError, match=r"model.hf_dir"):
    plurality.claim(votes, {"workdir": "/elsewhere", "step": 3}, questions, plurality.FIELDS.config())
  judged = str(tmp_path / "judged.jsonl")
  judge.claim(judged, [judge.spec_identity(f"hf:{tiny_hf_dir}")], {"spec": "oracle"}, questions, judge.FIELDS.config())
  with pytest.raises(FingerprintError, match=r"judge.spec: \"oracle\" -> \"http://h/v1,model=m\""):
    judge.claim(judged, [judge.spec_identity(f"hf:{tiny_hf_dir}")], judge.spec_identity("http://h/v1,model=m"),
                questions, judge.FIELDS.config())


def test_an_output_a_run_left_without_a_fingerprint_is_not_adopted(tmp_path):
  out = str(tmp_path / "pairs.jsonl")
  open(out + ".log.jsonl", "w").write('{"question_id": "q1"}\n')
  with pytest.raises(FingerprintError, match=r"recorded no fingerprint .*pairs.jsonl.log.jsonl"):
    pts.claim(out, {"workdir": "/w", "step": 1}, [], pts.pts_fields())


def test_decontam_refuses_other_benchmarks_and_redoes_everything_with_overwrite(setup):  # noqa: F811
  bench, allow, spec, tmp = setup
  settings = decontam.Settings(common_items=2)
  out = str(tmp / "out")
  narrow = str(tmp / "narrow.jsonl")
  with open(bench) as f:
    first_line = f.readline()
  open(narrow, "w").write(first_line)
  decontam.run(narrow, spec, out, allow, settings, progress=None)
  with pytest.raises(FingerprintError, match=r"benchmarks.count: 1 -> 3"):
    decontam.run(bench, spec, out, allow, settings, progress=None)
  redone = decontam.run(bench, spec, out, allow, settings, progress=None, overwrite=True)
  fresh = decontam.run(bench, spec, str(tmp / "fresh"), allow, settings, progress=None)
  assert redone["sources"] == fresh["sources"] and redone["contaminated"] > 0
  inside = tmp / "src"  # the sources' own folder: --overwrite must remove nothing there
  files = sorted(os.listdir(inside))
  with pytest.raises(ValueError, match=r"the output .*src holds the input config.data.sources.\w+.globs="):
    decontam.run(bench, spec, str(inside), allow, settings, progress=None, overwrite=True)
  assert sorted(os.listdir(inside)) == files


def test_decontam_checks_a_source_file_again_when_it_changed(setup):  # noqa: F811
  bench, allow, spec, tmp = setup
  out = str(tmp / "out")
  settings = decontam.Settings(common_items=2)
  first = decontam.run(bench, spec, out, allow, settings, progress=None)
  source = tmp / "src" / "a.jsonl"
  source.write_text(source.read_text() + json.dumps({"text": "one more clean line", "n": 99}) + "\n")
  again = decontam.run(bench, spec, out, allow, settings, progress=None)
  assert again["sources"]["plain"]["docs"] == first["sources"]["plain"]["docs"] + 1
