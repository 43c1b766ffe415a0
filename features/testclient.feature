Feature: The test client proves a running kvservice behaves
  An operator points the test client at a kvservice and asks, over HTTP,
  whether each promise holds.

  Scenario: The index lists every check and the kvservice it tests
    When I open the test client's index
    Then the status is 200
    And the index lists test_deletion, test_overwrite, test_history, test_create_only, test_conditional_writes, test_validation, test_binary_values, test_content_types, test_listing, test_tokens, test_expiry, test_watch, test_all
    And the index names the kvservice under test

  Scenario Outline: Each check passes against the running kvservice
    When I run the test client's /<check>
    Then the status is 200
    And the check <check> passed with every step

    Examples:
      | check                   |
      | test_deletion           |
      | test_overwrite          |
      | test_history            |
      | test_create_only        |
      | test_conditional_writes |
      | test_validation         |
      | test_binary_values      |
      | test_content_types      |
      | test_listing            |
      | test_expiry             |
      | test_watch              |

  Scenario: All checks at once
    When I run the test client's /test_all
    Then the status is 200
    And every check in the results passed

  Scenario: An unknown check is a clear error
    When I run the test client's /test_nothing
    Then the status is 404
    And the header Content-Type is "application/problem+json"

  Scenario: A browser gets the page, a script gets JSON
    When I open the test client's index in a browser
    Then the status is 200
    And the header Content-Type is "text/html; charset=utf-8"
    When I open the test client's index
    Then the header Content-Type is "application/json"

  Scenario: The metrics count a run and show its verdict
    Given I noted how many runs of test_deletion the test client's metrics count
    When I run the test client's /test_deletion
    And I read the test client's metrics
    Then the metrics count at least one more run of test_deletion
    And the metrics say test_deletion last passed
