"""The vessel path as a workflow: image → lumen → surface → tagged mesh → blood flow.

``vessel_flow``  the stages, their cache records and ``results.json`` (:func:`run_vessel_flow`)
``solve_stage``  the flow solve, in-process or under ``mpiexec -n N``
``cli``          ``digipat flow`` and ``digipat synth``
"""

from workflows.flow.vessel_flow import RESULT_FILE, VesselFlowConfig, WorkflowError, run_vessel_flow, summary_text

__all__ = ["VesselFlowConfig", "WorkflowError", "run_vessel_flow", "summary_text", "RESULT_FILE"]
