"""`${parameters.X}` templating as ML Commons does it (devstack.opensearch.templating)."""

from __future__ import annotations

import json

import pytest

from devstack.opensearch.templating import (
    TemplateError,
    call_parameters,
    escape_json,
    fill_payload,
    fill_url,
    substitute,
)

BLUEPRINT = (
    '{ "BatchStrategy": "${parameters.BatchStrategy}", "ModelName": "${parameters.ModelName}", '
    '"DataProcessing" : ${parameters.DataProcessing}, "TransformInput": ${parameters.TransformInput}, '
    '"TransformJobName" : "${parameters.TransformJobName}", "TransformOutput" : '
    '${parameters.TransformOutput}, "TransformResources" : ${parameters.TransformResources}}'
)
CONNECTOR_PARAMS = {  # as a connector stores them: non-strings already compact JSON
    "BatchStrategy": "MultiRecord", "ModelName": "minilm",
    "DataProcessing": '{"InputFilter":"$.text","JoinSource":"Input","OutputFilter":"$"}',
    "TransformInput": '{"ContentType":"application/json","SplitType":"Line"}',
    "TransformOutput": '{"S3OutputPath":"s3://b/out/"}',
    "TransformResources": '{"InstanceCount":1,"InstanceType":"ml.m5.xlarge"}',
}


def test_strings_are_json_escaped():
    params = call_parameters({}, {"text": 'say "hi"\n\tto C:\\ and é'})
    assert params["text"] == 'say \\"hi\\"\\n\\tto C:\\\\ and \\u00E9'
    payload = fill_payload('{"input": "${parameters.text}"}', params)
    assert json.loads(payload) == {"input": 'say "hi"\n\tto C:\\ and é'}


def test_escape_json_matches_apache_commons():
    assert escape_json("a/b") == "a\\/b"  # escapeJson escapes the solidus too
    assert escape_json("\x01\U0001F600") == "\\u0001\\uD83D\\uDE00"
    assert escape_json("plain text 123") == "plain text 123"


def test_non_strings_are_compact_json():
    params = call_parameters({}, {"obj": {"a": [1, 2], "b": {"c": None}}, "n": 4, "flag": True})
    assert params == {"obj": '{"a":[1,2],"b":{"c":null}}', "n": "4", "flag": "true"}
    payload = fill_payload('{"o": ${parameters.obj}, "n": ${parameters.n}, "f": ${parameters.flag}}', params)
    assert json.loads(payload) == {"o": {"a": [1, 2], "b": {"c": None}}, "n": 4, "f": True}


def test_json_strings_and_no_escape_params_are_not_escaped():
    params = call_parameters({}, {"arr": '["x", "y"]', "raw": 'a "b"', "no_escape_params": "raw"})
    assert params["arr"] == '["x", "y"]' and params["raw"] == 'a "b"'


def test_request_overrides_whole_key_without_merging():
    params = call_parameters(CONNECTOR_PARAMS, {
        "TransformJobName": "job-1",
        "TransformInput": {"DataSource": {"S3DataSource": {"S3Uri": "s3://b/in/"}}}})
    body = json.loads(fill_payload(BLUEPRINT, params))
    assert body["TransformInput"] == {"DataSource": {"S3DataSource": {"S3Uri": "s3://b/in/"}}}
    assert "SplitType" not in json.dumps(body["TransformInput"])  # replaced, not merged
    assert body["DataProcessing"]["InputFilter"] == "$.text"  # connector value, unescaped
    assert body["TransformJobName"] == "job-1"


def test_connector_parameters_are_not_escaped():
    params = call_parameters({"prompt": 'He said "x"'}, {})
    with pytest.raises(TemplateError, match="^Invalid payload: "):
        fill_payload('{"p": "${parameters.prompt}"}', params)


def test_placeholder_not_filled():
    with pytest.raises(TemplateError) as err:
        fill_payload('{"a": "${parameters.x}", "b": "${parameters.y}"}', {"y": "1"})
    assert str(err.value) == "Some parameter placeholder not filled in payload: x"
    with pytest.raises(TemplateError) as err:
        fill_payload('{"a": "${parameters.x}", "b": "${parameters.z}"}', {})
    assert str(err.value) == "Some parameter placeholder not filled in payload: x, z"
    skipped = fill_payload('{"a": "${parameters.x}"}', {"skip_validating_missing_parameters": "true"})
    assert skipped == '{"a": "${parameters.x}"}'


def test_invalid_payload():
    with pytest.raises(TemplateError) as err:
        fill_payload('{"input": ${parameters.input} }', {})
    assert str(err.value) == 'Invalid payload: {"input": ${parameters.input} }'
    with pytest.raises(TemplateError, match="^Invalid payload: "):
        fill_payload('"just a string"', {})


def test_defaults_escapes_recursion_and_to_string():
    assert substitute("${parameters.a:-dflt}", {}) == "dflt"
    assert fill_payload('{"a": "${parameters.a:-null}"}', {}) == '{"a": null}'
    assert substitute("$${parameters.a}", {"a": "x"}) == "${parameters.a}"
    assert substitute("${parameters.a}", {"a": "<${parameters.b}>", "b": "B"}) == "<B>"
    assert substitute("${parameters.a.toString()}", {"a": 'q"1'}) == 'q\\"1'
    with pytest.raises(TemplateError, match="Infinite loop"):
        substitute("${parameters.a}", {"a": "${parameters.a}"})


def test_url_is_filled():
    url = "https://api.sagemaker.${parameters.region}.amazonaws.com/CreateTransformJob"
    assert fill_url(url, {"region": "eu-west-1"}) == "https://api.sagemaker.eu-west-1.amazonaws.com/CreateTransformJob"
