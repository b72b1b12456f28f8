"""``ctdd simulate``: a recorded stream of events replayed on a virtual clock through the real pipeline and
the Dotdigital sandbox, printed as a timeline of Dotdigital calls and trigger decisions (docs/simulate.md).

- ``stream``: the JSON-lines format of a recorded stream;
- ``environment``: the settings, sandboxes, fakes and database a simulation runs with;
- ``runner``: the loop that moves the virtual clock and records what happened;
- ``timeline``: the timeline and its summary, as text or JSON.
"""

from ctdd.simulation.runner import SimulationError, SimulationResult, simulate
from ctdd.simulation.stream import StreamError, StreamEvent, read_stream

__all__ = ["SimulationError", "SimulationResult", "StreamError", "StreamEvent", "read_stream", "simulate"]
