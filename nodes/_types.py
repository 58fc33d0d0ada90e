"""The custom socket type carried between LinEAS nodes."""

from comfy_api.latest import io

Steering = io.Custom("LINEAS_STEERING")
