"""What every command line of blink_jax shares: quiet logs and one-line errors.

  if __name__ == "__main__":
    cli.run(main)        # in place of absl's app.run(main)

A user's mistake (a missing file, a bad value, a bad input line, an
artifact made by another model) ends the run with one line on stderr,
`error: <what>`, and exit status 1; `--debug` shows the traceback
instead. Any other exception is a bug and keeps its traceback. Ctrl-C ends
with `error: interrupted` and status 130. A flag that does not parse
(--batch_size=0 where it must be positive, a misspelt --config.train.num_step)
is reported the same way, before `main` runs. Library INFO lines that a user cannot act on (Orbax's
per-checkpoint detail, JAX's probing of platforms the machine lacks) are
dropped from the log.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from typing import Any, Callable

from absl import app
from absl import flags
from absl import logging as absl_logging

FLAGS = flags.FLAGS
flags.DEFINE_bool("debug", False, "On an error, show its traceback instead of one line.")


class UserError(Exception):
  """A mistake in what the command was asked to do; reported as one line."""


def run(main: Callable[[list[str]], Any]) -> None:
  """absl's `app.run(main)`, with quiet library logs and one-line errors (see above)."""
  app.run(functools.partial(_guarded, main), flags_parser=_parse_flags)


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, its errors on one line (absl writes two; a misspelt config
  override raises a chain of three exceptions)."""
  try:
    return FLAGS(argv)
  except BrokenPipeError:  # --help | head
    _stop_on_broken_pipe()
  except Exception as e:  # pylint: disable=broad-except
    # FLAGS.debug is not parsed yet: read it off the command line.
    if any(a in ("--debug", "--debug=true", "--debug=1") for a in argv[1:]):
      raise
    if isinstance(e, flags.Error):
      _exit(one_line(e), 1)
    if isinstance(e, (KeyError, AttributeError)) and e.args:
      # ml_collections raises KeyError("'num_step'\nDid you mean ...?") and re-raises it
      # as an AttributeError holding its repr: the KeyError's own text is the clear one.
      cause = e
      while not isinstance(cause, KeyError) and cause.__context__ is not None:
        cause = cause.__context__
      name, _, hint = str(cause.args[0] if cause.args else e.args[0]).partition("\n")
      _exit(f"no such config field {name}" + (f". {one_line(hint)}" if hint else ""), 1)
    _exit(f"cannot parse the flags: {one_line(e)} (--debug shows the traceback)", 1)


def quiet_library_logs() -> None:
  """Drops the chatty INFO lines of libraries from absl's log handler (stderr)."""
  handler = absl_logging.get_absl_handler()
  if not any(isinstance(f, _QuietLibraries) for f in handler.filters):
    handler.addFilter(_QuietLibraries())


class _QuietLibraries(logging.Filter):
  """Keeps warnings and errors, and the INFO lines of everything but the noisy libraries."""

  # Orbax logs every save and restore in detail; gcsfs and fsspec their settings.
  NOISY_PATHS = ("/orbax/", "/tensorboardX/", "/gcsfs/", "/fsspec/")

  def filter(self, record: logging.LogRecord) -> bool:
    if record.levelno >= logging.WARNING:
      return True
    if any(p in record.pathname for p in self.NOISY_PATHS):
      return False
    # JAX tries every platform it knows (TPU, GPU plugins) and reports at INFO each one the
    # machine lacks: "Unable to initialize backend 'tpu'". A platform the user asks for
    # (JAX_PLATFORMS) fails with an exception instead, so nothing a user needs is lost.
    return not (record.name.startswith("jax")
                and record.getMessage().startswith("Unable to initialize backend"))


def is_user_error(error: BaseException) -> bool:
  """Whether `error` comes from the user's arguments or inputs rather than from a bug."""
  # OSError: a missing or unreadable file; ValueError (jsonl.DataError among them): a bad
  # value or input line.
  if isinstance(error, (UserError, OSError, ValueError)):
    return True
  # A workdir whose artifacts disagree. Looked up, not imported: the module imports JAX, and
  # if it is not loaded, the error cannot be one of its own.
  workdir = sys.modules.get("blink_jax.workdir")
  return workdir is not None and isinstance(error, workdir.StaleArtifactError)


def one_line(error: BaseException) -> str:
  """The error's message on one line (some libraries write several)."""
  text = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
  return text or type(error).__name__


def _guarded(main: Callable[[list[str]], Any], argv: list[str]) -> Any:
  quiet_library_logs()
  try:
    return main(argv)
  except BrokenPipeError:
    _stop_on_broken_pipe()
  except KeyboardInterrupt:
    if FLAGS.debug:
      raise
    _exit("interrupted", 130)
  except Exception as e:  # pylint: disable=broad-except
    if FLAGS.debug or not is_user_error(e):
      raise
    # A UserError is about the arguments, where a traceback has nothing to add.
    hint = "" if isinstance(e, UserError) else " (--debug shows the traceback)"
    _exit(one_line(e) + hint, 1)


def _stop_on_broken_pipe() -> None:
  # The reader of stdout went away (`| head`): stop quietly, as Unix tools do. stdout is
  # pointed at /dev/null so that Python's flush at exit does not fail again.
  os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
  sys.exit(1)


def _exit(message: str, status: int) -> None:
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(status)
