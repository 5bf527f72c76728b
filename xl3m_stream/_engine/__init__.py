"""The engine's stages (private): each owns its state, takes its collaborators in its
constructor and returns values; none imports the engine, and only the
:class:`~xl3m_stream.engine.Engine` facade owns the task group and emits events.

    feed -> feeding.Feeder -> intake.Intake -> journal.Journal.log -> queue.ScoringQueue
         -> core.Core.score_batch
         (dispatch.Dispatcher on the devices; signals.Signals; the store; watches.Watches)
    ask  -> queue drained -> select.Selector -> answer.Answerer

Recovery replays the log through ``Intake.apply``, which cuts through
:class:`~xl3m_stream.segmenter.Cutter` as ``LogReader`` and the evaluation do: one path.
"""
