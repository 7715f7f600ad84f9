"""Study -> top-k table (Markdown/CSV/HTML), figures (plotly), first-layer pictures.

Reports read everything from the storage (user_attrs and the artifact store); they never
import `search.train.trainer`.
"""
