"""ComfyUI entry point of the LinEAS node pack (V3: comfy_entrypoint). Nothing is imported from ComfyUI
until ComfyUI calls it, so this package also imports cleanly outside ComfyUI (pytest, the CLI)."""

# per-node help pages (web/docs/<node_id>.md), shown in the frontend's node help panel
WEB_DIRECTORY = "./web"


async def comfy_entrypoint():
    from comfy_api.latest import ComfyExtension

    from .nodes import NODES
    from .nodes._files import register_folder

    class LineasExtension(ComfyExtension):
        async def on_load(self) -> None:
            register_folder()

        async def get_node_list(self):
            return list(NODES)

    register_folder()
    return LineasExtension()
