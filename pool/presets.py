"""Vendors a user can pick when adding a vendor, with their API base URLs."""

from __future__ import annotations

from dataclasses import dataclass

from pool.models import Protocol


@dataclass(frozen=True)
class VendorPreset:
    slug: str
    name: str
    protocol: str
    base_url: str


VENDOR_PRESETS: tuple[VendorPreset, ...] = (
    VendorPreset("openai", "OpenAI", Protocol.OPENAI, "https://api.openai.com/v1"),
    VendorPreset(
        "anthropic", "Anthropic", Protocol.ANTHROPIC, "https://api.anthropic.com/v1"
    ),
    # Azure URLs name the customer's own resource: replace YOUR-RESOURCE.
    VendorPreset(
        "azure-openai",
        "Azure OpenAI",
        Protocol.AZURE,
        "https://YOUR-RESOURCE.openai.azure.com/openai",
    ),
    VendorPreset(
        "gemini",
        "Google Gemini",
        Protocol.GEMINI,
        "https://generativelanguage.googleapis.com/v1beta",
    ),
    VendorPreset(
        "deepseek", "DeepSeek", Protocol.OPENAI, "https://api.deepseek.com/v1"
    ),
    VendorPreset("mistral", "Mistral", Protocol.OPENAI, "https://api.mistral.ai/v1"),
    VendorPreset("groq", "Groq", Protocol.OPENAI, "https://api.groq.com/openai/v1"),
    VendorPreset(
        "openrouter", "OpenRouter", Protocol.OPENAI, "https://openrouter.ai/api/v1"
    ),
    VendorPreset("moonshot", "Moonshot", Protocol.OPENAI, "https://api.moonshot.ai/v1"),
    VendorPreset(
        "zhipu", "Zhipu GLM", Protocol.OPENAI, "https://open.bigmodel.cn/api/paas/v4"
    ),
    VendorPreset(
        "qwen",
        "Qwen (DashScope)",
        Protocol.OPENAI,
        "https://dashscope.aliyuncs.com/compatible-mode/v1",
    ),
    VendorPreset("xai", "xAI", Protocol.OPENAI, "https://api.x.ai/v1"),
)

PRESETS_BY_SLUG = {preset.slug: preset for preset in VENDOR_PRESETS}
