"""The mocker: a simulated engine with a real block cache and Dynamo's timing model; no ML imports."""
