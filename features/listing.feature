Feature: Listing keys
  A user lists the keys that hold a value, in order, a page at a time, and may narrow the
  list to the keys that start with a prefix.

  Background:
    Given the keys apple, banana, cherry and date hold values
    And the key banana was deleted

  Scenario: One page lists every key that holds a value, in order
    When I list my keys, 100 a page
    Then the page lists apple, cherry and date
    And it is the last page

  Scenario: Small pages follow each other to the end
    When I list my keys, 2 a page
    Then the page lists apple and cherry
    And more keys are to come
    When I list the next page
    Then the page lists date
    And it is the last page

  Scenario: A prefix narrows the list
    When I list my keys starting with "ch", 100 a page
    Then the page lists cherry
    And it is the last page

  Scenario: A bad page size is refused
    When I list my keys, 0 a page
    Then the status is 400
    And the answer is a "bad-request" problem saying "limit must be a whole number from 1 to 10000"
