"""The node's REST API (port 8081): thin routes over the job runner and the vSphere layer."""
